"""Check an op's hand-written backward against central finite differences, in float64.

For a scalar L(x), the central difference (L(x + eps e_i) - L(x - eps e_i)) / (2 eps) has an
error of order eps^2, so in float64 with eps = 1e-6 it agrees with the true derivative to
about 1e-8 relative: a wrong backward shows up at once.
"""

from __future__ import annotations

from . import backend
from .autograd import Tensor


class GradcheckError(AssertionError):
    """The analytic and numeric gradients disagree; the message names the worst entry."""


def gradcheck(fn, *inputs, eps: float = 1e-6, atol: float = 1e-6, rtol: float = 1e-4) -> bool:
    """Compare ``fn``'s gradients with central differences for every float64 input.

    Args:
        fn: takes ``inputs`` and returns a Tensor of any shape. A non-scalar output is reduced
            to a scalar with fixed random weights, so every entry of it is tested.
        inputs: Tensors; those with ``requires_grad=True`` are checked and must be float64.
        eps: finite-difference step; atol, rtol: tolerance |analytic - numeric| <=
            atol + rtol * |numeric|.
    Returns:
        True when every gradient matches; otherwise raises GradcheckError naming the input,
        the index, and both values of the worst entry.
    """
    checked = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True, so there is nothing to check")
    for i in checked:
        if inputs[i].dtype != backend.xp.float64:
            raise TypeError(
                f"gradcheck: input {i} has dtype {inputs[i].dtype}; use float64 (float32 "
                "differences are too coarse to judge a gradient)"
            )

    out = fn(*inputs)
    weights = backend.xp.asarray(
        backend.np.random.default_rng(1234).standard_normal(out.shape), dtype=out.dtype
    )

    def scalar_loss() -> float:
        return float((fn(*inputs).data * weights).sum())

    for i in checked:
        inputs[i].grad = None
    (out * weights).sum().backward()

    for i in checked:
        x = inputs[i]
        analytic = backend.to_numpy(x.grad) if x.grad is not None else backend.np.zeros(x.shape)
        numeric = backend.np.zeros(x.shape)
        flat = x.data.reshape(-1)  # a view: writing to it perturbs x in place
        for j in range(flat.size):
            original = float(flat[j])
            flat[j] = original + eps
            plus = scalar_loss()
            flat[j] = original - eps
            minus = scalar_loss()
            flat[j] = original
            numeric.reshape(-1)[j] = (plus - minus) / (2 * eps)
        np = backend.np
        error = np.abs(analytic - numeric) - (atol + rtol * np.abs(numeric))
        error = np.where(np.isnan(error), np.inf, error)  # a NaN on either side is a failure
        if error.size and error.max() > 0:
            worst = tuple(int(i) for i in np.unravel_index(int(error.argmax()), x.shape))
            raise GradcheckError(
                f"gradient of input {i} (shape {x.shape}) is wrong at index {worst}: "
                f"backward gives {analytic[worst]:.8g}, finite differences give "
                f"{numeric[worst]:.8g}"
            )
    return True
