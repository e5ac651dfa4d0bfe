"""lora_np.parallel: a batch's shards on threads give the loss and gradient of one plain pass."""

import re
import signal
import threading

import numpy as np
import pytest

import lora_np as ln
from lora_np import graph, parallel
from lora_np.transformer import GPT, GPTConfig

CONFIG = dict(vocab_size=16, block_size=8, n_embd=16, n_head=2, n_layer=2)
# float64: the shards' sums run in another order, nothing else differs; float32: its rounding
TOLERANCE = {"float64": 1e-12, "float32": 1e-5}


def _model(dtype="float64", lora=False):
    ln.manual_seed(0)
    model = GPT(GPTConfig(**CONFIG)).to(dtype)
    if lora:
        ln.lora.inject(model, ["q", "v"], r=2, alpha=4.0)
        for _, layer in ln.lora.lora_layers(model):  # nonzero B, so A gets a gradient too
            layer.B.data = ln.backend.rng().standard_normal(layer.B.shape).astype(dtype)
    return model


def _batch(rows, seed=0, padded=True):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, CONFIG["vocab_size"], (rows, CONFIG["block_size"]))
    targets = rng.integers(0, CONFIG["vocab_size"], (rows, CONFIG["block_size"]))
    if padded:  # a different number of counted targets in every row
        for row in range(rows):
            targets[row, : row % CONFIG["block_size"]] = -100
    return idx, targets


def _grads(model):
    return {name: None if p.grad is None else p.grad.copy() for name, p in model.named_parameters()}


def _plain(model, idx, targets):
    model.zero_grad()
    _, loss = model(idx, targets)
    loss.backward()
    return float(loss.item()), _grads(model)


def _parallel(model, idx, targets, threads):
    model.zero_grad()
    loss = parallel.loss_and_backward(model, idx, targets, threads=threads)
    return loss, _grads(model)


def _assert_close(expected, got, tolerance):
    """Each gradient within ``tolerance`` times the largest gradient entry of the model (a
    gradient that is zero in exact arithmetic, such as a key bias's, is only rounding)."""
    assert expected.keys() == got.keys()
    scale = max(float(np.abs(g).max()) for g in expected.values() if g is not None)
    for name, g in expected.items():
        if g is None:
            assert got[name] is None, name
            continue
        assert got[name] is not None, name
        assert got[name].dtype == g.dtype, name
        np.testing.assert_allclose(got[name], g, rtol=0, atol=tolerance * scale, err_msg=name)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("threads", [2, 3])
def test_loss_and_gradients_equal_one_pass_with_uneven_shards_and_padding(dtype, threads):
    model = _model(dtype)
    idx, targets = _batch(7)  # 7 rows: shards of 4 + 3, or 3 + 2 + 2
    loss, grads = _plain(model, idx, targets)
    got_loss, got = _parallel(model, idx, targets, threads)
    assert isinstance(got_loss, float)
    assert got_loss == pytest.approx(loss, rel=TOLERANCE[dtype], abs=0)
    _assert_close(grads, got, TOLERANCE[dtype])


def test_a_shard_without_counted_targets_adds_nothing_and_gives_no_nan():
    model = _model()
    idx, targets = _batch(6, padded=False)
    targets[2:4] = -100  # the middle shard of three counts nothing (its own loss is NaN)
    loss, grads = _plain(model, idx, targets)
    got_loss, got = _parallel(model, idx, targets, 3)
    assert np.isfinite(got_loss)
    assert got_loss == pytest.approx(loss, rel=1e-12, abs=0)
    assert all(np.isfinite(g).all() for g in got.values())
    _assert_close(grads, got, 1e-12)


def test_no_counted_target_at_all_behaves_like_the_plain_path():
    model = _model()
    idx, targets = _batch(4)
    targets[:] = -100
    loss, grads = _plain(model, idx, targets)
    got_loss, got = _parallel(model, idx, targets, 2)
    assert np.isnan(loss) and np.isnan(got_loss)
    for name, g in grads.items():
        np.testing.assert_array_equal(got[name], g, err_msg=name)


def test_lora_model_gets_gradients_on_a_and_b_only():
    model = _model(lora=True)
    idx, targets = _batch(5)
    loss, grads = _plain(model, idx, targets)
    got_loss, got = _parallel(model, idx, targets, 2)
    trained = {name for name, g in got.items() if g is not None}
    assert trained and all(name.endswith((".A", ".B")) for name in trained), trained
    assert trained == {name for name, p in model.named_parameters() if p.requires_grad}
    assert got_loss == pytest.approx(loss, rel=1e-12, abs=0)
    _assert_close(grads, got, 1e-12)


def test_gradients_add_to_those_already_there():
    model = _model()
    idx, targets = _batch(5)
    _, grads = _plain(model, idx, targets)
    rng = np.random.default_rng(1)
    before = {name: rng.standard_normal(p.shape) for name, p in model.named_parameters()}
    for name, p in model.named_parameters():
        p.grad = before[name].copy()
    parallel.loss_and_backward(model, idx, targets, threads=2)
    got = _grads(model)
    _assert_close({n: before[n] + g for n, g in grads.items()}, got, 1e-12)


def test_one_thread_is_the_plain_path_bit_for_bit():
    model = _model("float32")
    idx, targets = _batch(5)
    loss, grads = _plain(model, idx, targets)
    got_loss, got = _parallel(model, idx, targets, 1)
    assert got_loss == loss
    for name, g in grads.items():
        np.testing.assert_array_equal(got[name], g, err_msg=name)


def test_more_threads_than_rows_uses_one_shard_per_row():
    model = _model()
    idx, targets = _batch(2)
    loss, grads = _plain(model, idx, targets)
    got_loss, got = _parallel(model, idx, targets, 5)
    assert got_loss == pytest.approx(loss, rel=1e-12, abs=0)
    _assert_close(grads, got, 1e-12)


def test_the_thread_pool_is_kept_between_steps():
    model = _model()
    idx, targets = _batch(4)
    parallel.loss_and_backward(model, idx, targets, threads=3)
    running = threading.active_count()
    for _ in range(4):
        parallel.loss_and_backward(model, idx, targets, threads=3)
        parallel.forward(model, idx, threads=3)
    assert threading.active_count() == running


@pytest.mark.parametrize("threads", [0, -1, 2.0, True, "2", None])
def test_bad_thread_counts_are_refused_naming_the_value(threads):
    model = _model()
    idx, targets = _batch(4)
    with pytest.raises(ValueError, match=f"threads must be an int >= 1, got {threads!r}"):
        parallel.loss_and_backward(model, idx, targets, threads=threads)
    with pytest.raises(ValueError, match="threads must be an int >= 1"):
        parallel.forward(model, idx, threads=threads)
    assert all(p.grad is None for p in model.parameters())


def test_rows_of_idx_and_targets_must_match():
    model = _model()
    idx, targets = _batch(4)
    with pytest.raises(ValueError, match=r"same number of rows.*\(4, 8\).*\(3, 8\)"):
        parallel.loss_and_backward(model, idx, targets[:3], threads=2)
    with pytest.raises(ValueError, match=r"idx needs a batch axis.*shape \(\)"):
        parallel.loss_and_backward(model, np.int64(3), targets, threads=2)
    assert all(p.grad is None for p in model.parameters())


def test_an_error_in_one_shards_forward_pass_changes_no_gradient():
    model = _model()
    idx, targets = _batch(6)
    idx[5, 0] = CONFIG["vocab_size"]  # a bad token id in the last shard only
    with pytest.raises(ValueError, match="outside the vocabulary"):
        parallel.loss_and_backward(model, idx, targets, threads=2)
    assert all(p.grad is None for p in model.parameters())


def test_inside_no_grad_it_raises_as_backward_does():
    model = _model()
    idx, targets = _batch(4)
    with ln.no_grad(), pytest.raises(RuntimeError, match="does not require grad"):
        parallel.loss_and_backward(model, idx, targets, threads=2)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_forward_gives_the_logits_of_one_pass_without_a_graph(threads):
    model = _model()
    idx, _ = _batch(7)
    with ln.no_grad():
        expected, _ = model(idx)
    got = parallel.forward(model, idx, threads=threads)
    assert isinstance(got, ln.Tensor) and not got.requires_grad
    assert got.shape == expected.shape
    np.testing.assert_allclose(got.data, expected.data, rtol=1e-12, atol=1e-12)
    if threads == 1:
        np.testing.assert_array_equal(got.data, expected.data)


def test_other_backends_take_the_plain_path(backend_name):
    model = _model()
    idx, targets = _batch(5)
    xp = ln.backend.xp
    idx, targets = xp.asarray(idx), xp.asarray(targets)
    loss, grads = _plain(model, idx, targets)
    got_loss, got = _parallel(model, idx, targets, 2)
    if backend_name != "numpy":  # exactly the plain path
        assert got_loss == loss
        for name, g in grads.items():
            assert bool((got[name] == g).all()), name
    logits = parallel.forward(model, idx, threads=2)
    assert logits.shape == (5, CONFIG["block_size"], CONFIG["vocab_size"])


def test_threads_adding_into_one_leaf_lose_nothing():
    """Many threads run backward at once on graphs that share one large leaf. Every gradient
    is a whole number, so the sum is exact in any order: a lost or torn update (two threads
    adding into .grad at once, as without graph's lock) shows as a wrong total."""
    size, threads, rounds = 1_000_000, 8, 30
    leaf = ln.Tensor(np.zeros(size), requires_grad=True)
    weights = [np.full(size, float(i + 1)) for i in range(threads)]
    start = threading.Barrier(threads)

    def work(i):
        for _ in range(rounds):
            loss = (leaf * weights[i]).sum()  # d loss / d leaf = weights[i]
            start.wait()  # every thread reaches backward() together
            loss.backward()

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    expected = rounds * threads * (threads + 1) / 2
    assert leaf.grad.min() == expected and leaf.grad.max() == expected


def test_the_leaf_lock_is_held_while_adding():
    """The check above is statistical; this one is not: a gradient arriving while another
    thread holds the lock waits for it."""
    leaf = ln.Tensor(np.zeros(3), requires_grad=True)
    done = threading.Event()

    def add():
        (leaf * 2.0).sum().backward()
        done.set()

    with graph._leaf_lock:
        thread = threading.Thread(target=add)
        thread.start()
        assert not done.wait(0.2)  # blocked on the lock
        assert leaf.grad is None
    thread.join()
    np.testing.assert_array_equal(leaf.grad, [2.0, 2.0, 2.0])


# ------------------------------------------------------------------ train.train(threads=...)
def _train(threads, steps=4, batches=None):
    model = _model()
    batches = batches or (lambda step: _batch(6, seed=step))
    history = ln.train.train(model, batches, steps, lr=1e-2, progress=False, threads=threads)
    return model, history


def test_training_on_threads_follows_the_one_thread_run():
    one, h1 = _train(1)
    two, h2 = _train(2)
    np.testing.assert_allclose(h2["loss"], h1["loss"], rtol=1e-10)
    np.testing.assert_allclose(h2["grad_norm"], h1["grad_norm"], rtol=1e-10)
    for (name, p), q in zip(one.named_parameters(), two.parameters()):
        np.testing.assert_allclose(q.data, p.data, rtol=0, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("threads", [0, 1.5, True])
def test_train_refuses_a_bad_thread_count_before_changing_anything(threads):
    model = _model()
    before = [p.data.copy() for p in model.parameters()]
    with pytest.raises(ValueError, match=f"threads must be an int >= 1, got {threads!r}"):
        ln.train.train(model, lambda step: _batch(4), 2, progress=False, threads=threads)
    with pytest.raises(ValueError, match="threads must be an int >= 1"):
        ln.train.TrainSettings(steps=1, threads=threads)
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.data, b)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_batch_where_no_target_counts_is_named_as_such_and_keeps_no_gradient(threads):
    idx, targets = _batch(4)
    targets[:] = -100  # nothing counts: the loss is undefined, no learning rate is to blame
    model = _model()
    with pytest.raises(ValueError, match=r"step 0 has no target that counts.*-100") as info:
        ln.train.train(model, lambda step: (idx, targets), 3, progress=False, threads=threads)
    assert "learning rate" not in str(info.value)
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------ errors, Ctrl-C, nesting
class _Hooked:
    """Wraps a model; each call's loss goes through ``hook(loss)`` (which may replace it)."""

    def __init__(self, model, hook):
        self.model, self.hook = model, hook

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, idx, targets=None):
        logits, loss = self.model(idx, targets)
        return logits, self.hook(loss)


def _on_a_worker() -> bool:
    return threading.current_thread().name.startswith("lora_np-parallel")


def _with_backward(loss, backward_fn):
    """``loss`` again, as a node whose backward first runs ``backward_fn(grad) -> (grad,)``."""
    return type(loss).from_op(loss.data, (loss,), backward_fn)


def test_an_error_in_one_shards_backward_leaves_every_gradient_as_it_was():
    def fail(g):
        raise RuntimeError("this shard's backward failed")

    model = _model()
    hooked = _Hooked(model, lambda loss: _with_backward(loss, fail) if _on_a_worker() else loss)
    idx, targets = _batch(6)
    rng = np.random.default_rng(2)
    for p in model.parameters():  # gradients already there must come back exactly
        p.grad = rng.standard_normal(p.shape)
    before = _grads(model)
    with pytest.raises(RuntimeError, match="this shard's backward failed"):
        parallel.loss_and_backward(hooked, idx, targets, threads=2)
    for name, g in _grads(model).items():
        np.testing.assert_array_equal(g, before[name], err_msg=name)


class _ChangedAfterForward(_Hooked):
    """Its forward pass ends by assigning a weight the graph used: backward() refuses there,
    midway, after some leaves already received their gradient."""

    def __init__(self, model):
        super().__init__(model, lambda loss: loss)

    def __call__(self, idx, targets=None):
        out = self.model(idx, targets)
        weight = self.model.blocks[0].attn.q.weight
        weight.data = weight.data.copy()
        return out


@pytest.mark.parametrize("threads", [1, 2])
def test_an_error_midway_through_backward_leaves_every_gradient_as_it_was(threads):
    model = _model()
    idx, targets = _batch(6)
    rng = np.random.default_rng(3)
    for name, p in model.named_parameters():  # some gradients there already, some not
        p.grad = rng.standard_normal(p.shape) if "attn" in name else None
    before = _grads(model)
    with pytest.raises(RuntimeError, match="changed in place"):
        parallel.loss_and_backward(_ChangedAfterForward(model), idx, targets, threads=threads)
    for name, g in _grads(model).items():
        if before[name] is None:
            assert g is None, name
        else:
            np.testing.assert_array_equal(g, before[name], err_msg=name)


def test_ctrl_c_during_threaded_training_leaves_no_worker_running_and_no_gradient():
    """Ctrl-C reaches the main thread while the other shard's backward is still running: the
    call must wait for it, and leave no gradient of the interrupted step."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("a signal handler runs on the main thread only")
    interrupted, returned, outlived = threading.Event(), threading.Event(), []
    main = threading.main_thread().ident

    def on_sigint(signum, frame):
        interrupted.set()
        raise KeyboardInterrupt

    def slow(g):  # the worker's shard: press Ctrl-C, then keep working a while
        signal.pthread_kill(main, signal.SIGINT)
        interrupted.wait(10)
        outlived.append(returned.wait(1.0))  # True only if train() returned before this ended
        return (g,)

    model = _model()
    hooked = _Hooked(model, lambda loss: _with_backward(loss, slow) if _on_a_worker() else loss)
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with pytest.raises(KeyboardInterrupt):
            ln.train.train(hooked, lambda step: _batch(6), 3, progress=False, threads=2)
    finally:
        returned.set()
        signal.signal(signal.SIGINT, previous)
    parallel._pool(2).submit(lambda: None).result()  # the worker has finished whatever it did
    assert outlived == [False], "a worker was still running after train() returned"
    assert all(p.grad is None for p in model.parameters())


def test_a_model_that_uses_parallel_itself_is_refused_and_the_pool_keeps_working():
    inner = _model()

    class Nested:  # a model whose forward pass runs parallel.forward itself
        def __call__(self, idx, targets=None):
            logits = parallel.forward(inner, idx, threads=2)
            return logits, None if targets is None else inner(idx, targets)[1]

    idx, targets = _batch(6)
    for call in (
        lambda: parallel.loss_and_backward(Nested(), idx, targets, threads=2),
        lambda: parallel.forward(Nested(), idx, threads=2),
    ):
        with pytest.raises(RuntimeError, match="inside one of its own shards"):
            call()
    assert all(p.grad is None for p in inner.parameters())
    loss, grads = _plain(inner, idx, targets)  # the pool still serves a plain model
    got_loss, got = _parallel(inner, idx, targets, 2)
    assert got_loss == pytest.approx(loss, rel=1e-12, abs=0)
    _assert_close(grads, got, 1e-12)


@pytest.mark.parametrize("shape", [(0, 8), (4, 0)])
@pytest.mark.parametrize("threads", [1, 2])
def test_an_empty_batch_is_one_clear_error_on_every_path(shape, threads):
    model = _model()
    empty = np.zeros(shape, dtype=np.int64)
    expected = rf"empty batch: idx has shape {re.escape(str(shape))}"
    with pytest.raises(ValueError, match=expected):
        parallel.loss_and_backward(model, empty, empty, threads=threads)
    with pytest.raises(ValueError, match=expected):
        parallel.forward(model, empty, threads=threads)
    with pytest.raises(ValueError, match=rf"the batch for step 0: {expected}"):
        ln.train.train(model, lambda step: (empty, empty), 2, progress=False, threads=threads)
    assert all(p.grad is None for p in model.parameters())
