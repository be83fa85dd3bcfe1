"""The handler contract in process: every user function, every default, every content type."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from aiops.inference import codecs
from aiops.inference.handler import Context, Handler, default_model_fn

from aiops.errors import UsageError

from .conftest import save_double, save_mlp, write_script


def ctx(model_dir="/m", **kw):
    return Context(model_dir=str(model_dir), request_id="r1", **kw)


def loaded(model_dir, script_text=None, **kw):
    script = write_script(model_dir, script_text) if script_text is not None else None
    h = Handler(model_dir, script=script, **kw)
    h.load()
    return h


# ------------------------------------------------------------------ model_fn


def test_default_model_fn_loads_model_pt(double_dir):
    model = default_model_fn(str(double_dir))
    assert torch.equal(model(torch.tensor([1.0, 2.0])), torch.tensor([2.0, 4.0]))
    assert model.training is False


def test_default_model_fn_takes_the_single_pth(tmp_path):
    save_double(tmp_path / "m", name="weights.pth")
    model = default_model_fn(str(tmp_path / "m"))
    assert torch.equal(model(torch.ones(2)), torch.full((2,), 2.0))


@pytest.mark.parametrize("names", [[], ["a.pt", "b.pth"]])
def test_default_model_fn_needs_exactly_one_file(tmp_path, names):
    folder = tmp_path / "m"
    folder.mkdir()
    for n in names:
        save_double(folder, name=n)
    with pytest.raises(UsageError, match="exactly one .pt or .pth"):
        default_model_fn(str(folder))


def test_default_model_fn_rejects_a_state_dict(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    torch.save({"w": torch.ones(2)}, folder / "model.pt")
    with pytest.raises(UsageError, match="not a TorchScript model"):
        default_model_fn(str(folder))


def test_user_model_fn_with_and_without_context(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    h = loaded(folder, "def model_fn(model_dir):\n    return ('plain', model_dir)\n")
    assert h.model == ("plain", str(folder))
    h2 = loaded(
        folder, "def model_fn(model_dir, context):\n    return context.system_properties['model_dir']\n"
    )
    assert h2.model == str(folder)


def test_pre_model_and_warmup_fns_run_in_order(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    h = loaded(
        folder,
        "calls = []\n"
        "def pre_model_fn(model_dir):\n    calls.append('pre')\n"
        "def model_fn(model_dir):\n    calls.append('model'); return 1\n"
        "def model_warmup_fn(model_dir, model):\n    calls.append(('warm', model))\n",
    )
    assert h.module.calls == ["pre", "model", ("warm", 1)]


# ------------------------------------------------------------------ contract validation


@pytest.mark.parametrize("other", ["input_fn", "predict_fn", "output_fn"])
def test_transform_fn_with_another_fn_is_a_load_error(tmp_path, other):
    folder = tmp_path / "m"
    folder.mkdir()
    script = write_script(
        folder, f"def transform_fn(m, b, c, a):\n    return b\ndef {other}(x, y):\n    return x\n"
    )
    with pytest.raises(UsageError, match=f"transform_fn cannot be used together with {other}"):
        Handler(folder, script=script)


@pytest.mark.parametrize(
    "source, error",
    [
        ("def input_fn(body):\n    return body\n", "input_fn takes 1 arguments"),
        ("import no_such_module_xyz\n", "importing it failed: ModuleNotFoundError"),
    ],
    ids=["wrong-arity", "import-error"],
)
def test_broken_script_is_a_load_error(tmp_path, source, error):
    folder = tmp_path / "m"
    folder.mkdir()
    script = write_script(folder, source)
    with pytest.raises(UsageError, match=error):
        Handler(folder, script=script)


# ------------------------------------------------------------------ user functions


def test_user_functions_each_called_with_context(tmp_path, double_dir):
    h = loaded(
        double_dir,
        (
            "import json\n"
            "def input_fn(body, content_type, context):\n"
            "    assert isinstance(body, str)\n"
            "    return (json.loads(body), content_type, context.request_id)\n"
            "def predict_fn(data, model, context):\n"
            "    return {'data': data[0], 'ctype': data[1], 'rid': data[2]}\n"
            "def output_fn(prediction, accept, context):\n"
            "    return json.dumps({**prediction, 'accept': accept}), 'application/vnd.test+json'\n"
        ),
    )
    body, ctype = h.invoke(b'{"x": 1}', "application/json; charset=utf-8", "application/json", ctx())
    assert ctype == "application/vnd.test+json"
    assert json.loads(body) == {
        "data": {"x": 1},
        "ctype": "application/json",
        "rid": "r1",
        "accept": "application/json",
    }


def test_output_fn_plain_body_gets_accept_as_content_type(double_dir):
    h = loaded(double_dir, "def output_fn(prediction, accept):\n    return 'x'\n")
    assert h.invoke(b"[1]", "application/json", "text/plain", ctx()) == (b"x", "text/plain")
    # missing and */* Accept become the default accept
    assert h.invoke(b"[1]", "application/json", "*/*", ctx()) == (b"x", "application/json")


def test_transform_fn_gets_bytes_for_binary_types(double_dir):
    h = loaded(
        double_dir,
        "def transform_fn(model, body, content_type, accept):\n"
        "    return (type(body).__name__ + ':' + content_type + ':' + accept).encode(), 'text/plain'\n",
    )
    assert (
        h.invoke(b"\x93NUMPY", "application/x-npy", None, ctx())[0]
        == b"bytes:application/x-npy:application/json"
    )
    assert h.invoke(b"1,2", "text/csv", "text/csv", ctx())[0] == b"str:text/csv:text/csv"


def test_output_fn_returning_a_non_bytes_object_is_an_error(double_dir):
    h = loaded(double_dir, "def output_fn(prediction, accept):\n    return 42\n")
    with pytest.raises(Exception, match="must return bytes or str"):
        h.invoke(b"[1]", "application/json", None, ctx())


def test_predict_fn_default_runs_without_grad_in_eval(tmp_path):
    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([float(torch.is_grad_enabled()), float(self.training)])

    folder = tmp_path / "p"
    folder.mkdir()
    scripted = torch.jit.script(Probe())
    scripted.train()
    torch.jit.save(scripted, str(folder / "model.pt"))
    h = loaded(folder)
    h.model.train()  # even if something flips it back to training mode
    body, _ = h.invoke(b"[1]", "application/json", None, ctx())
    assert json.loads(body) == [0.0, 0.0]


# ------------------------------------------------------------------ content types both ways


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.mark.parametrize(
    "content_type,body,expected",
    [
        ("application/json", b"[[1, 2], [3, 4]]", [[2.0, 4.0], [6.0, 8.0]]),
        ("text/csv", b"1,2\n3,4\n", [[2.0, 4.0], [6.0, 8.0]]),
        ("application/x-npy", _npy(np.array([[1, 2], [3, 4]], dtype=np.float32)), [[2.0, 4.0], [6.0, 8.0]]),
        ("application/x-npz", _npz(x=np.array([[1, 2], [3, 4]], dtype=np.float32)), [[2.0, 4.0], [6.0, 8.0]]),
    ],
)
def test_default_decoders(double_dir, content_type, body, expected):
    h = loaded(double_dir)
    out, ctype = h.invoke(body, content_type, "application/json", ctx())
    assert ctype == "application/json"
    assert json.loads(out) == expected


def test_npz_scipy_sparse_is_densified(double_dir):
    sparse = pytest.importorskip("scipy.sparse")
    for fmt in ("csr", "csc", "coo"):
        m = sparse.random(3, 4, density=0.5, format=fmt, random_state=1, dtype=np.float32)
        buf = io.BytesIO()
        sparse.save_npz(buf, m)
        out, _ = loaded(double_dir).invoke(buf.getvalue(), "application/x-npz", "application/x-npy", ctx())
        assert np.array_equal(np.load(io.BytesIO(out)), m.toarray() * 2), fmt


def test_json_decoder_matches_the_toolkits_float32(double_dir):
    h = loaded(double_dir)
    data = h.decode(b"[0.1, 2]", "application/json", ctx())
    assert data.dtype == torch.float32 and torch.equal(data, torch.FloatTensor(np.array([0.1, 2.0])))


def test_npy_keeps_its_dtype(double_dir):
    data = loaded(double_dir).decode(_npy(np.arange(3, dtype=np.int64)), "application/x-npy", ctx())
    assert data.dtype == torch.int64


@pytest.mark.parametrize(
    "accept,check",
    [
        ("application/json", lambda b: json.loads(b) == [[2.0, 4.0]]),
        ("text/csv", lambda b: b.decode().strip() == "2.0,4.0"),
        ("application/x-npy", lambda b: np.load(io.BytesIO(b)).tolist() == [[2.0, 4.0]]),
        # q-values are honoured (RFC 9110): the higher quality wins whatever the order
        ("text/csv;q=0.9, application/json", lambda b: json.loads(b) == [[2.0, 4.0]]),
        ("application/json;q=0.1, text/csv", lambda b: b.decode().strip() == "2.0,4.0"),
        ("image/png, application/x-npy;q=0.5", lambda b: np.load(io.BytesIO(b)).tolist() == [[2.0, 4.0]]),
    ],
)
def test_default_encoders(double_dir, accept, check):
    out, ctype = loaded(double_dir).invoke(b"[[1, 2]]", "application/json", accept, ctx())
    from werkzeug.http import parse_accept_header

    best = max(parse_accept_header(accept), key=lambda item: item[1] if item[0] in codecs.ENCODABLE else -1)[
        0
    ]
    assert ctype == best
    assert check(out)


def test_accept_with_q_zero_is_refused(double_dir):
    with pytest.raises(codecs.NotAcceptable):
        loaded(double_dir).invoke(b"[1]", "application/json", "application/json;q=0, image/png", ctx())


@pytest.mark.parametrize("accept", [None, "", "*/*", "text/html, */*"])
def test_missing_or_any_accept_uses_the_default_accept(double_dir, accept):
    h = loaded(double_dir, default_accept="text/csv")
    assert h.invoke(b"[3]", "application/json", accept, ctx()) == (b"6.0\n", "text/csv")


def test_csv_output_matches_the_toolkit_encoder():
    # sagemaker_inference.encoder._array_to_csv: np.savetxt(fmt="%s", delimiter=",") of prediction.tolist()
    pred = np.array([[0.5, 1.25], [3.0, -1.0]], dtype=np.float32)
    stream = io.StringIO()
    np.savetxt(stream, pred.tolist(), delimiter=",", fmt="%s")
    assert codecs.encode(pred.tolist(), codecs.CSV) == stream.getvalue().encode()


@pytest.mark.parametrize(
    "content_type,body,error",
    [
        ("text/plain", b"hi", codecs.UnsupportedMediaType),
        ("application/json", b"{not json", codecs.BadRequest),
        ("application/json", b'["a", "b"]', codecs.BadRequest),
        ("application/json", b"[[1], [1, 2]]", codecs.BadRequest),
        ("application/json", b"\xff\xfe", codecs.BadRequest),
        ("text/csv", b"", codecs.BadRequest),
        ("application/x-npy", b"not npy", codecs.BadRequest),
        ("application/x-npy", _npy(np.array([{"a": 1}], dtype=object)), codecs.BadRequest),
        ("application/x-npz", _npz(a=np.ones(1), b=np.ones(1)), codecs.BadRequest),
    ],
)
def test_bad_bodies_raise_typed_errors(double_dir, content_type, body, error):
    with pytest.raises(error):
        loaded(double_dir).invoke(body, content_type, None, ctx())


def test_unsupported_accept_is_406_before_any_work(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    h = loaded(
        folder,
        "calls = []\ndef model_fn(d):\n    return None\n"
        "def input_fn(b, c):\n    calls.append(1)\n    return 1\n"
        "def predict_fn(d, m):\n    return [1]\n",
    )
    with pytest.raises(codecs.NotAcceptable):
        h.invoke(b"[1]", "application/json", "image/png", ctx())
    assert h.module.calls == []


# ------------------------------------------------------------------ batching


def test_batch_equals_unbatched_on_an_mlp(tmp_path):
    folder = save_mlp(tmp_path / "mlp", sizes=(8, 32, 32, 3))
    h = loaded(folder)
    rng = np.random.default_rng(0)
    bodies = [json.dumps(rng.normal(size=8).tolist()).encode() for _ in range(5)]
    bodies += [json.dumps(rng.normal(size=(2, 8)).tolist()).encode() for _ in range(3)]  # 2-row requests
    requests = [(b, "application/json", None, ctx()) for b in bodies]
    alone = [h.invoke(*req) for req in requests]
    together = h.invoke_batch(requests)
    assert [t[1] for t in together] == [a[1] for a in alone]
    for t, a in zip(together, alone, strict=True):
        # The same rows, the same model: equal up to the float32 rounding of the BLAS kernel, which
        # oneDNN picks by the number of rows (bit-identical only for row-size-independent ops).
        np.testing.assert_allclose(
            np.array(json.loads(t[0])), np.array(json.loads(a[0])), rtol=1e-5, atol=1e-6
        )
    assert len(json.loads(together[5][0])) == 2


def test_batch_is_bit_identical_for_elementwise_models(double_dir):
    h = loaded(double_dir)
    rng = np.random.default_rng(1)
    requests = [
        (json.dumps(rng.normal(size=(n, 4)).tolist()).encode(), "application/json", None, ctx())
        for n in (1, 3, 2, 1)
    ]
    requests += [
        (_npy(rng.normal(size=4).astype(np.float32)), "application/x-npy", "application/x-npy", ctx())
        for _ in range(3)
    ]
    assert h.invoke_batch(requests) == [h.invoke(*req) for req in requests]


def test_batch_isolates_a_bad_request(tmp_path):
    folder = save_mlp(tmp_path / "mlp")
    h = loaded(folder)
    good = json.dumps([0.5] * 8).encode()
    requests = [
        (good, "application/json", None, ctx()),
        (b"[1, 2]", "application/json", None, ctx()),
        (b"{", "application/json", None, ctx()),
        (good, "text/plain", None, ctx()),
    ]
    results = h.invoke_batch(requests)
    assert results[0] == h.invoke(*requests[0])
    assert isinstance(results[1], RuntimeError)  # the model itself fails on 2 features
    assert isinstance(results[2], codecs.BadRequest)
    assert isinstance(results[3], codecs.UnsupportedMediaType)


def test_flat_json_batch_is_parsed_as_one_document_and_equals_unbatched(double_dir):
    h = loaded(double_dir)
    rng = np.random.default_rng(2)
    bodies = [json.dumps(rng.normal(size=4).tolist()).encode() for _ in range(5)] + [b" [1, 2, 3, 4] "]
    requests = [(b, "application/json", None, ctx()) for b in bodies]
    assert h._invoke_joined(requests) is not None  # the joined path itself took them
    assert h.invoke_batch(requests) == [h.invoke(*req) for req in requests]


def test_joined_batch_encodes_each_accept_as_the_request_alone_would(tmp_path):
    h = loaded(save_mlp(tmp_path / "mlp"))
    rng = np.random.default_rng(3)
    accepts = [
        None,
        "application/json",
        "*/*",
        "text/csv",
        "application/x-npy",
        "text/html",
        "text/csv;q=0.5, application/json",
        None,
    ]
    requests = [
        (json.dumps(rng.normal(size=8).tolist()).encode(), "application/json", a, ctx()) for a in accepts
    ]
    together = h._invoke_joined(requests)
    assert together is not None  # the joined path took the batch, a 406 among them
    for got, req in zip(together, requests, strict=True):
        try:
            alone = h.invoke(*req)
        except codecs.HttpError as err:
            assert isinstance(got, codecs.HttpError) and got.status_code == err.status_code == 406
            continue
        assert got[1] == alone[1]
        if alone[1] == "application/x-npy":
            np.testing.assert_allclose(
                np.load(io.BytesIO(got[0])), np.load(io.BytesIO(alone[0])), rtol=1e-5, atol=1e-6
            )
        else:  # a row of a batched forward may differ from the lone forward in the last bits
            np.testing.assert_allclose(
                np.array(
                    json.loads(got[0])
                    if "json" in alone[1]
                    else np.loadtxt(io.StringIO(got[0].decode()), delimiter=",")
                ),
                np.array(
                    json.loads(alone[0])
                    if "json" in alone[1]
                    else np.loadtxt(io.StringIO(alone[0].decode()), delimiter=",")
                ),
                rtol=1e-5,
                atol=1e-6,
            )


@pytest.mark.parametrize(
    "rows",
    [
        np.random.default_rng(4).normal(size=(6, 10)).astype(np.float32),
        np.random.default_rng(5).normal(size=(3, 1)),
        np.arange(12).reshape(4, 3),
        np.array([[np.nan, np.inf, -0.0, 1e-45]], dtype=np.float32),
        np.random.default_rng(6).normal(size=(4, 6)).astype(np.float32)[:, ::2],  # not contiguous
    ],
)
def test_json_rows_equal_each_row_encoded_alone(rows):
    assert codecs.json_rows(rows) == [codecs.encode(r, codecs.JSON) for r in rows]


@pytest.mark.parametrize(
    "rows",
    [
        np.zeros((2, 0)),
        np.zeros((2, 2, 2)),
        np.ones((2, 2), dtype=np.float16),
        np.array([[True, False]]),
        [[1.0, 2.0]],
    ],
)
def test_json_rows_declines_what_it_cannot_split(rows):
    assert codecs.json_rows(rows) is None


@pytest.mark.parametrize(
    "parts",
    [
        [b"[1.5, 2],[3.5", b"4]"],  # together they would read as a valid document; alone neither is valid
        [b"[1.5, 2]", b"[1.5, true]"],
        [b"[1.5, 2]", b"[1.5, 2, 3]"],  # ragged across requests
        [b"[1.5, 2]", b"[]"],
    ],
)
def test_joined_batch_never_accepts_what_a_request_alone_refuses(double_dir, parts):
    h = loaded(double_dir)
    requests = [(b, "application/json", None, ctx()) for b in parts]
    together = h.invoke_batch(requests)
    for got, req in zip(together, requests, strict=True):
        try:
            alone = h.invoke(*req)
        except codecs.HttpError as err:
            assert isinstance(got, codecs.HttpError) and got.status_code == err.status_code
        else:
            assert got == alone


def test_only_declared_or_default_predict_fns_batch(tmp_path, double_dir):
    assert loaded(double_dir).batchable
    assert not loaded(double_dir, "def predict_fn(d, m):\n    return d\n").batchable
    assert loaded(double_dir, "aiops_batch = True\ndef predict_fn(d, m):\n    return d\n").batchable
    assert not loaded(double_dir, "def transform_fn(m, b, c, a):\n    return b\n").batchable


_EDGE_FLOATS = [
    0.1,
    -0.0,
    1e-45,
    1.4e-45,
    3.4028234e38,
    3.5e38,
    1e308,
    5e-324,
    2.5e-8,
    123456789.123,
    -7.0,
    1,
]


def test_flat_json_fast_decoder_equals_orjson_bit_for_bit():
    rng = np.random.default_rng(7)
    bodies = [
        json.dumps(rng.normal(scale=s, size=300).tolist()).encode() for s in (1e-30, 1e-3, 1, 1e6, 1e30)
    ]
    bodies += [json.dumps(_EDGE_FLOATS).encode(), b" [ 1.5 ,\n2e3, -4E-2 ] ", b"[1.5]"]
    for body in bodies:
        for dtype in (np.float32, np.float64):
            # 3.5e38 and 1e308 are past float32's range: both paths make them inf, as numpy's cast
            # does, and numpy's overflow warning for that is expected here
            with np.errstate(over="ignore"):
                got = codecs.decode(body, codecs.JSON, dtype)
                want = np.array(json.loads(body), dtype=dtype)
            assert got.dtype == want.dtype and got.shape == want.shape
            assert got.tobytes() == want.tobytes(), body[:60]


def test_rectangular_json_fast_decoder_equals_orjson_bit_for_bit():
    rng = np.random.default_rng(8)
    bodies = [
        json.dumps(rng.normal(scale=s, size=(n, w)).tolist()).encode()
        for s, n, w in ((1e-30, 3, 7), (1, 544, 784), (1e30, 1, 5), (1e3, 9, 1))
    ]
    bodies += [
        json.dumps([_EDGE_FLOATS, _EDGE_FLOATS[::-1]]).encode(),
        b" [ [1.5, 2] ,\n[3, 4e1] ] ",
        b"[[1.5]]",
    ]
    for body in bodies:
        for dtype in (np.float32, np.float64, None):
            with np.errstate(over="ignore"):
                got = codecs.decode(body, codecs.JSON, dtype)
                want = np.array(json.loads(body), dtype=dtype or np.float64)
            assert codecs._simd_array(body) is not None, body[:60]  # the fast path itself took it
            assert got.dtype == want.dtype and got.shape == want.shape
            assert got.tobytes() == want.tobytes(), body[:60]


@pytest.mark.parametrize(
    "body",
    [
        b"[[1.5, 2], [3, [4]]]",  # the same number of values as a 2 x 2, nested irregularly
        b"[[1.5, 2], [3]]",
        b"[[1.5], []]",
        b"[[], []]",
        b"[[[1.5, 2]], [[3, 4]]]",
        b"[[1.5, 2], 3]",
        b"[[1.5, true], [1, 2]]",
        b'[[1.5, "2"], [1, 2]]',
        b"[1, [1.5, 2]]",
        b"[[1.5, 2], [3, 4],]",
    ],
)
def test_rectangular_json_fast_decoder_leaves_the_rest_to_the_general_path(body):
    assert codecs._simd_array(body) is None


def test_a_rectangular_json_body_deeper_than_the_limit_is_still_refused():
    codecs.configure(json_max_depth=1)
    try:
        with pytest.raises(codecs.HttpError) as err:
            codecs.decode(b"[[1.5, 2], [3, 4]]", codecs.JSON, np.float32)
        assert err.value.status_code == 400 and "dimensions" in str(err.value)
    finally:
        codecs.configure(json_max_depth=32)


@pytest.mark.parametrize(
    "body,status",
    [
        (b"[1.5, true]", 400),
        (b"[1.5, null]", 400),
        (b'[1.5, "2"]', 400),
        (b"[1.5,]", 400),
        (b"[1.5", 400),
        (b"[1.5, 1e400]", 400),  # out of double range: orjson's refusal, as before
    ],
)
def test_flat_json_fast_decoder_refuses_what_the_general_path_refuses(body, status):
    with pytest.raises(codecs.HttpError) as err:
        codecs.decode(body, codecs.JSON, np.float32)
    assert err.value.status_code == status


def test_decode_rows_takes_only_equal_rows_of_numbers():
    pytest.importorskip("simdjson")
    rows = [b"[1.5, 2, 3]", b"[0.25, -1e-3, 7]"]
    got = codecs.decode_rows(rows, np.float32)
    assert got is not None and got.dtype == np.float32
    assert got.tobytes() == np.array([json.loads(r) for r in rows], dtype=np.float32).tobytes()
    assert codecs.decode_rows([b"[1.5, 2]", b"[1.5, 2, 3]"], np.float32) is None  # ragged
    assert codecs.decode_rows([b"[1.5, 2]", b"[]", b"[1.5, 2, 3]"], np.float32) is None  # one empty
    assert codecs.decode_rows([b'["1,5", 2]', b"[1.5, 2]"], np.float32) is None  # a string with a comma
    assert codecs.decode_rows([b"[1, 2]", b"[3, 4]"], np.float32) is None  # integers: the int64 path
    assert codecs.decode_rows([b"[1.5, true]", b"[1.5, 2]"], np.float32) is None
    assert codecs.decode_rows([b"[1.5, 2]", b"[[1.5, 2]]"], np.float32) is None  # a nested row
    assert codecs.decode_rows([b"[1.5, 2]", b"[3, [4]]"], np.float32) is None  # same total, nested
    # after every refusal above the parser is still usable (no document of it left alive)
    assert codecs._simd_floats(b"[0.5, 1]").tolist() == [0.5, 1.0]
