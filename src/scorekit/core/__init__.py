r"""The noise axis and what lives on it: processes :math:`x_t = \alpha(t) x_0 + \sigma(t)
\varepsilon` with their derivatives and inverses, the conversions between what a network
predicts, the exact Gaussian-mixture targets, sampling grids, loss weightings and
noise-level samplers, and every random draw of the library."""
