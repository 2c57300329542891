"""pyquant.quant.serialize: a fake-quant network saved and loaded without pickle computes bit-identical outputs."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import pyquant
from pyquant.quant import act_quantizers, quant_layers, serialize
from tests.nets import resnet8


pytestmark = pytest.mark.usefixtures("one_thread")


# dfq: CLE, bias correction, BN-derived ranges; squant: weight_fp buffers (weights replaced by on-grid values);
# zeroq with first_last_bits: per-layer bit-widths, ranges on synthetic data
@pytest.mark.parametrize("recipe, overrides", [("dfq", {}), ("squant", {}),
                                               ("zeroq", {"first_last_bits": 8, "num_samples": 8,
                                                          "data_iterations": 3})])
def test_round_trip_is_bit_identical(tmp_path, recipe, overrides):
    q = pyquant.quantize(resnet8(), recipe, w_bits=4, a_bits=4, input_shape=(3, 8, 8), progress=False, **overrides)
    path = str(tmp_path / "fq.safetensors")
    serialize.save(q, path, metadata={"recipe": recipe})
    loaded = serialize.load(path)
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(q(x), loaded(x))
    assert not loaded.training and loaded.act_quantizer_sites == q.act_quantizer_sites
    for (name, m), (name2, m2) in zip(quant_layers(q).items(), quant_layers(loaded).items()):
        assert name == name2 and m.weight_quantizer.bits == m2.weight_quantizer.bits
        assert m.input_quantizer_name == m2.input_quantizer_name
    assert {n: a.tied_to for n, a in act_quantizers(q).items()} == \
        {n: a.tied_to for n, a in act_quantizers(loaded).items()}
    # the loaded model is a full fake-quant model: int8 conversion of it equals that of the original
    with torch.no_grad():
        assert torch.equal(pyquant.int8.convert(q)(x), pyquant.int8.convert(loaded)(x))
    assert serialize.read_metadata(path)["metadata"] == {"recipe": recipe}


def test_load_refuses_foreign_functions_and_modules(tmp_path):
    q = pyquant.quantize(resnet8(), "dfq", w_bits=8, a_bits=8, input_shape=(3, 8, 8), progress=False)
    path = str(tmp_path / "fq.safetensors")
    serialize.save(q, path)
    with safe_open(path, framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    manifest = json.loads(meta[serialize.METADATA_KEY])
    bad = json.loads(json.dumps(manifest))
    next(n for n in bad["nodes"] if n["op"] == "call_function")["target"] = "os:system"
    save_file(tensors, path, metadata={serialize.METADATA_KEY: json.dumps(bad)})
    with pytest.raises(ValueError, match="refusing"):
        serialize.load(path)
    bad = json.loads(json.dumps(manifest))
    next(iter(bad["modules"].values()))["type"] = "Popen"
    save_file(tensors, path, metadata={serialize.METADATA_KEY: json.dumps(bad)})
    with pytest.raises(ValueError, match="unknown module type"):
        serialize.load(path)
    save_file(tensors, path)
    with pytest.raises(ValueError, match="no fake-quant graph"):
        serialize.load(path)


def test_save_refuses_what_it_cannot_store_without_pickle(tmp_path):
    q = pyquant.quantize(resnet8(), "dfq", w_bits=8, a_bits=8, input_shape=(3, 8, 8), progress=False)
    q.conv1.callback = lambda: None  # an attribute that only pickle could store
    with pytest.raises(ValueError, match="conv1.*callback"):
        serialize.save(q, str(tmp_path / "fq.safetensors"))
    with pytest.raises(TypeError, match="GraphModule"):
        serialize.save(q.conv1, str(tmp_path / "fq.safetensors"))
