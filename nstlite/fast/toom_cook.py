"""Toom-Cook derivation of Winograd's minimal filtering matrices F(m, r).

F(4, 3) evaluates the 6-tap input and the 3-tap kernel at five points and infinity,
multiplies, and interpolates. ``toom_cook`` derives A^T, G and B^T exactly (as Fractions) from
the points; ``nstlite.fast.winograd`` hard-codes the result for ``WINO_POINTS`` (scaled by
powers of two) and a test checks that the two agree.

Why these points: Barabasz et al. (2018) show that the float error of F(4, 3) depends on the
points: the transforms' coefficients grow with powers of the points, and on real data most of
the error is the rounding of the 36 channel sums, which the output transform amplifies. The
points 0, +-1/2, +-2 (a set closed under p -> 1/p, as 0 <-> infinity) about halve the float32
input-gradient error against Lavin & Gray's 0, +-1, +-2, at the same cost: dyadic coefficients
(exact in float32). ``benchmarks/winograd_error.py`` measures it on VGG19's layers.

References
----------
A. Lavin, S. Gray. *Fast Algorithms for Convolutional Neural Networks*. CVPR 2016 (arXiv:1509.09308).
B. Barabasz, A. Anderson, K. M. Soodhalter, D. Gregg. *Error analysis and improving the
accuracy of Winograd convolution for deep neural networks*. arXiv:1803.10986, 2018.
"""
from fractions import Fraction

WINO_POINTS = (0, Fraction(1, 2), Fraction(-1, 2), 2, -2)   # and infinity (Barabasz et al.)


def toom_cook(points, m=4, r=3):
    """Exact (Fraction) Toom-Cook matrices A^T (m x n), G (n x r), B^T (n x n) of F(m, r) for
    n - 1 = m + r - 2 finite points and infinity, such that
    ``A^T [(G g) * (B^T d)] = (sum_j g[j] d[i + j])_i``, the 1-D correlation.

    Column a of A^T evaluates the output polynomial's basis at point p_a (1, p, p^2, ...);
    row a of G evaluates the kernel there, divided by prod_{b != a} (p_a - p_b) (Lagrange);
    the point infinity takes the leading coefficient. B^T is then the unique matrix making
    the identity hold, solved exactly from its m r n linear equations."""
    n = m + r - 1
    p = [Fraction(x) for x in points]
    assert len(p) == n - 1 and len(set(p)) == n - 1
    AT = [[p[a] ** k for a in range(n - 1)] + [Fraction(int(k == m - 1))] for k in range(m)]
    G = []
    for a in range(n - 1):
        lagrange = Fraction(1)
        for b in range(n - 1):
            if b != a:
                lagrange *= p[a] - p[b]
        G.append([p[a] ** j / lagrange for j in range(r)])
    G.append([Fraction(int(j == r - 1)) for j in range(r)])
    # sum_a AT[k, a] G[a, j] BT[a, i] = [i == k + j]: for each input tap i, n unknowns BT[:, i]
    K = [[AT[k][a] * G[a][j] for a in range(n)] for k in range(m) for j in range(r)]
    BT = [[None] * n for _ in range(n)]
    for i in range(n):
        col = _solve_exact(K, [Fraction(int(i == k + j)) for k in range(m) for j in range(r)])
        for a in range(n):
            BT[a][i] = col[a]
    return AT, G, BT


def _solve_exact(K, rhs):
    """x with K x = rhs for a consistent (overdetermined) system of full column rank, by
    Gauss-Jordan elimination on Fractions."""
    rows = [list(k) + [v] for k, v in zip(K, rhs)]
    n = len(K[0])
    for c in range(n):
        piv = next(i for i in range(c, len(rows)) if rows[i][c] != 0)
        rows[c], rows[piv] = rows[piv], rows[c]
        rows[c] = [v / rows[c][c] for v in rows[c]]
        for i in range(len(rows)):
            if i != c and rows[i][c] != 0:
                f = rows[i][c]
                rows[i] = [u - f * v for u, v in zip(rows[i], rows[c])]
    assert all(v == 0 for row in rows[n:] for v in row), "inconsistent system"
    return [rows[i][n] for i in range(n)]
