# syntax=docker/dockerfile:1
# megatron_sft on GPUs: the NGC PyTorch image (CUDA, torch, Transformer Engine, Apex) plus this package.
#
#   docker build -t megatron-sft .
#   docker run --gpus all --ipc=host --rm -it -v /models:/models -v /runs:/runs \
#       -e HF_MODEL_CKPT=/models/Qwen3-0.6B -e MLM_WORK_DIR=/runs -e DATASET=/runs/chat.jsonl \
#       megatron-sft examples/finetune.sh Qwen/Qwen3-0.6B
#
# The image's torch, Transformer Engine and Apex are kept: they stay pinned to the image's own builds while
# the package's other dependencies install, the Transformer Engine range of the `gpu` extra is checked
# against the image's build (the build stops if it is outside), and the package itself goes in without
# dependencies. The image's /etc/pip/constraint.txt is not applied: this project pins its own versions.
FROM nvcr.io/nvidia/pytorch:25.12-py3

WORKDIR /workspace/megatron_sft
COPY pyproject.toml README.md ./

# /tmp/requirements.txt: the dependencies without torch, plus the gpu extra where the image lacks it;
# /tmp/image-constraints.txt: torch (and Transformer Engine, Apex) exactly as the image has them.
RUN <<'PYTHON' python3 -
import importlib.metadata as md
import tomllib

from packaging.requirements import Requirement

project = tomllib.load(open("pyproject.toml", "rb"))["project"]


def installed(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


requirements = [r for r in project["dependencies"] if Requirement(r).name != "torch"]
for line in project["optional-dependencies"]["gpu"]:
    req = Requirement(line)
    have = installed(req.name)
    if have is None:
        requirements.append(line)
    elif not req.specifier.contains(have, prereleases=True):
        raise SystemExit(f"the image's {req.name} {have} is outside the gpu extra's range {req.specifier}")
keep = [f"{name}=={installed(name)}" for name in ("torch", "transformer-engine", "apex") if installed(name)]
open("/tmp/requirements.txt", "w").write("\n".join(requirements) + "\n")
open("/tmp/image-constraints.txt", "w").write("\n".join(keep) + "\n")
print("requirements:", *requirements, "kept from the image:", *keep, sep="\n  ")
PYTHON
RUN PIP_CONSTRAINT=/tmp/image-constraints.txt pip install --no-cache-dir -r /tmp/requirements.txt

COPY . .
RUN pip install --no-cache-dir --no-deps -e . \
    && python3 -c "import megatron_sft, torch; print('megatron_sft on torch', torch.__version__)"

CMD ["bash"]
