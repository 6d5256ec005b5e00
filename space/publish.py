"""Publish the Space: stage space/ with the modeling_hdemucs_flax package copied beside app.py, then upload it.

    python space/publish.py --repo-id YOUR_NAME/hdemucs          # create or update the Space
    python space/publish.py --stage-only /tmp/hdemucs-space       # only write the folder that would be uploaded

hdemucs-flax is not on PyPI, so the Space cannot `pip install` it: the package's source is vendored instead
(app.py's folder is first on `sys.path`, so `import modeling_hdemucs_flax` finds the copy). Its dependencies
are pinned in requirements.txt. Needs a Hugging Face token with write access (`huggingface-cli login` or
HF_TOKEN) for uploading; `HF_ENDPOINT` is honoured.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent / "modeling_hdemucs_flax"
SPACE_FILES = ("app.py", "README.md", "requirements.txt")


def stage(target: Path) -> Path:
    """Write the Space's files into `target` (created; must not exist or be empty): app.py, README.md,
    requirements.txt, examples/*.ogg and modeling_hdemucs_flax/**/*.py. Returns `target`."""
    target.mkdir(parents=True, exist_ok=True)
    if any(target.iterdir()):
        raise SystemExit(f"{target}: not empty; stage into a new folder")
    for name in SPACE_FILES:
        shutil.copy2(HERE / name, target / name)
    (target / "examples").mkdir()
    for clip in sorted((HERE / "examples").glob("*.ogg")):
        shutil.copy2(clip, target / "examples" / clip.name)
    for source in sorted(PACKAGE.rglob("*.py")):
        copy = target / PACKAGE.name / source.relative_to(PACKAGE)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, copy)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--repo-id", help="the Space to create or update, e.g. your-name/hdemucs")
    action.add_argument("--stage-only", type=Path, metavar="DIR", help="write the staged folder here and stop")
    parser.add_argument("--private", action="store_true", help="create the Space private")
    parser.add_argument("--hardware", default=None, help="request Space hardware, e.g. cpu-upgrade (billed)")
    args = parser.parse_args(argv)

    if args.stage_only:
        print(stage(args.stage_only))
        return 0

    from huggingface_hub import HfApi

    api = HfApi()
    with tempfile.TemporaryDirectory(prefix="hdemucs-space-") as folder:
        staged = stage(Path(folder) / "space")
        api.create_repo(
            args.repo_id, repo_type="space", space_sdk="gradio", private=args.private, exist_ok=True,
            space_hardware=args.hardware,
        )  # fmt: skip
        commit = api.upload_folder(
            repo_id=args.repo_id,
            repo_type="space",
            folder_path=staged,
            commit_message="Update the hdemucs-flax Space",
            delete_patterns=["*.py", "modeling_hdemucs_flax/*.py", "examples/*"],  # files no longer shipped
        )
    print(f"uploaded {commit.commit_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
