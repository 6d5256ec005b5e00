"""Write the Space's example clips: short synthetic songs (drums, bass, chords, a sung melody), deterministic.

    python space/make_examples.py            # rewrites space/examples/*.ogg

They are synthesised (`modeling_hdemucs_flax.synth_song`) rather than cut from recordings, so the repository
holds no third-party music.
Ogg Vorbis keeps each 8-second stereo clip under 100 kB.
"""

from __future__ import annotations

import sys
from pathlib import Path

import soundfile as sf

from modeling_hdemucs_flax import synth_song

RATE = 44100
HERE = Path(__file__).resolve().parent
SECONDS = 8
EXAMPLES = {
    "synth_pop.ogg": dict(bpm=112, root=57, progression=[0, 8, 3, 10], melody=[7, 4, 5, 7, 12, 11, 7, -1], seed=1),
    "slow_ballad.ogg": dict(bpm=76, root=50, progression=[0, 5, 7, 5], melody=[4, 2, 0, -1, 7, 5, 4, 2], seed=2),
}


def main() -> int:
    out = HERE / "examples"
    out.mkdir(exist_ok=True)
    for name, kwargs in EXAMPLES.items():
        song = synth_song(SECONDS * RATE, RATE, 2, **kwargs)
        sf.write(out / name, song.T, RATE, format="OGG", subtype="VORBIS")
        print(f"{out / name}: {(out / name).stat().st_size / 1000:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
