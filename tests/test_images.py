"""aiops.images, the one source of image URIs: the SageMaker SDK's tables read as files, joined as
`sagemaker.core.image_uris.retrieve` joins them, with the processor decided by the GPU table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from aiops import images
from aiops.errors import UsageError
from aiops.gpufit import load_gpus

REGIONS = (
    "us-east-1",
    "cn-north-1",
    "us-gov-west-1",
    "il-central-1",
)  # each partition; il: the SDK's own case
NVIDIA_TYPES = ("ml.g5.xlarge", "ml.p4d.24xlarge")
CPU_TYPES = ("ml.m5.xlarge",)


# the SDK takes ~4 s of CPU to import: both tests that ask it run on one worker
@pytest.mark.xdist_group("sagemaker-sdk")
def test_the_same_uris_as_the_sdk_for_cpu_and_nvidia_types():
    image_uris = pytest.importorskip("sagemaker.core.image_uris")
    checked = 0
    for scope, versions in (("training", ("2.5", "2.8.0")), ("inference", ("2.5", "2.6"))):
        for version in versions:
            _, entry = images.version_entry("pytorch", scope, version)
            py = entry["py_versions"][0]
            for region in REGIONS:
                if region not in entry["registries"]:
                    continue
                for instance_type in NVIDIA_TYPES + CPU_TYPES:
                    ours = images.pytorch_image_uri(
                        scope=scope,
                        region=region,
                        version=version,
                        py_version=py,
                        instance_type=instance_type,
                    )
                    sdk = image_uris.retrieve(
                        "pytorch",
                        region=region,
                        version=version,
                        py_version=py,
                        instance_type=instance_type,
                        image_scope=scope,
                    )
                    assert ours == sdk, (scope, version, region, instance_type)
                    checked += 1
    assert checked >= 40  # the SDK takes ~0.1 s a call: a grid, not every combination
    for region in REGIONS[:2]:
        assert images.llm_image_uri("lmi", region=region, version="latest") == image_uris.retrieve(
            "djl-lmi", region=region, version="latest"
        )
        assert images.llm_image_uri("tgi", region=region, version="3.3") == image_uris.retrieve(
            "huggingface-llm", region=region, version="3.3", instance_type="ml.g5.xlarge"
        )


def test_the_processor_comes_from_the_gpu_table_not_the_first_letter():
    # g4ad has AMD GPUs: no CUDA, so the CPU image (the SDK's first-letter rule says gpu)
    assert images.processor_for("ml.g4ad.xlarge") == "cpu"
    assert images.pytorch_image_uri(
        scope="inference",
        region="us-east-1",
        version="2.5",
        py_version="py311",
        instance_type="ml.g4ad.xlarge",
    ).endswith(":2.5-cpu-py311")
    # pinned (the stack): the full version the alias stands for
    assert images.pytorch_image_uri(
        scope="inference",
        region="us-east-1",
        version="2.5",
        py_version="py311",
        instance_type="ml.g5.xlarge",
        pin=True,
    ).endswith(":2.5.1-gpu-py311")
    # every NVIDIA family of the GPU table, at any size (the table's sizes and others), gets the CUDA image
    for spec in load_gpus().all():
        family = images.instance_family(spec.instance_type)
        assert images.processor_for(spec.instance_type) == "gpu", spec.instance_type
        assert images.processor_for(f"ml.{family}.99xlarge") == "gpu"
    assert images.processor_for("ml.m5.large") == "cpu" and images.processor_for(None) == "cpu"  # serverless
    assert (
        images.processor_for("ml.g5.xlarge", ["gpu"]) == "gpu"
        and images.processor_for("ml.g5.xlarge", None) is None
    )
    with pytest.raises(images.ImageNotFound, match="Neuron"):
        images.processor_for("ml.trn1.2xlarge")


def test_latest_is_the_newest_release_where_the_table_has_no_such_alias():
    assert images.full_version("huggingface-llm", "inference", "latest") == max(
        images.scope_table("huggingface-llm", "inference")["versions"],
        key=lambda v: tuple(map(int, v.split("."))),
    )
    lmi = images.scope_table("djl-lmi", "inference")
    assert images.full_version("djl-lmi", "inference", "latest") == lmi["version_aliases"]["latest"]


def test_errors_name_what_to_change():
    with pytest.raises(images.ImageNotFound, match="allowed: .*2.5") as err:
        images.full_version("pytorch", "inference", "0.1")
    assert err.value.field == "version"
    with pytest.raises(images.ImageNotFound, match="py311 only") as err:
        images.image_uri("pytorch", scope="inference", region="us-east-1", version="2.5", py_version="py39")
    assert err.value.field == "py_version"
    with pytest.raises(images.ImageNotFound, match="published there") as err:
        images.image_uri(
            "pytorch", scope="inference", region="xx-nowhere-1", version="2.5", py_version="py311"
        )
    assert err.value.field == "region"


def test_answers_are_cached(tmp_path):
    kwargs = dict(
        scope="training", region="us-east-1", version="2.5", py_version="py311", instance_type="ml.g5.xlarge"
    )
    uri = images.pytorch_image_uri(**kwargs, cache_dir=tmp_path)
    cached = json.loads((tmp_path / "image-uris.json").read_text())
    assert cached == {"training|us-east-1|2.5|py311|ml.g5.xlarge": uri}
    (tmp_path / "image-uris.json").write_text(
        json.dumps({"training|us-east-1|2.5|py311|ml.g5.xlarge": "from-cache"})
    )
    assert images.pytorch_image_uri(**kwargs, cache_dir=tmp_path) == "from-cache"


def test_reading_the_tables_imports_no_sdk():
    code = (
        "import sys; from aiops import images; "
        "images.pytorch_image_uri(scope='inference', region='us-east-1', version='2.5', py_version='py311', "
        "instance_type='ml.g5.xlarge'); images.llm_image_uri('tgi', region='us-east-1', version='3.3');"
        "print('BAD', sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('sagemaker', 'boto3', 'botocore')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "BAD []" in out


def test_without_the_sdk_one_line_names_the_extra(monkeypatch):
    monkeypatch.setattr(images, "_package_dirs", lambda name: [])
    images.sdk_table.cache_clear()
    try:
        with pytest.raises(UsageError) as err:
            images.sdk_table("pytorch")
    finally:
        images.sdk_table.cache_clear()
    message = str(err.value)
    assert "pip install 'aiops[images]'" in message and "--image-uri" in message and "\n" not in message
