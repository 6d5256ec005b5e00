"""Reading and fetching weight files, with no model code: the torch-free checkpoint reader, the Hub loader with
one-line errors, checked downloads and the network probe."""
