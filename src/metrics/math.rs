//! The metric formulas, in f64: Fréchet distance between Gaussian feature statistics (FID),
//! Inception Score, CLIP score.

use super::MetricsError;

/// Mean and covariance of a set of feature vectors (the Gaussian FID compares).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStats {
    pub dim: usize,
    pub count: usize,
    pub mean: Vec<f64>,
    /// Row-major `dim x dim`, unbiased (divided by `count - 1`), as `numpy.cov(rowvar=False)`.
    pub cov: Vec<f64>,
}

impl FeatureStats {
    /// Statistics of `features` (`count x dim`, row-major). Needs at least two rows.
    pub fn from_features(features: &[f32], dim: usize) -> Result<FeatureStats, MetricsError> {
        if dim == 0 || !features.len().is_multiple_of(dim) {
            return Err(MetricsError::Input(format!(
                "{} feature values are not a whole number of rows of {dim}",
                features.len()
            )));
        }
        let n = features.len() / dim;
        if n < 2 {
            return Err(MetricsError::Input(format!(
                "FID needs at least 2 feature vectors per set, got {n}"
            )));
        }
        if features.iter().any(|v| !v.is_finite()) {
            return Err(MetricsError::Input(
                "features contain NaN or infinity".into(),
            ));
        }
        let mut mean = vec![0f64; dim];
        for row in features.chunks_exact(dim) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += v as f64;
            }
        }
        for m in &mut mean {
            *m /= n as f64;
        }
        // Centred features in f64, then Xcᵀ·Xc / (n − 1) as one matrix product.
        let centred: Vec<f64> = features
            .chunks_exact(dim)
            .flat_map(|row| row.iter().zip(&mean).map(|(&v, m)| v as f64 - m))
            .collect();
        let mut cov = gemm_f64(&centred, &centred, dim, dim, n, true);
        let scale = 1.0 / (n - 1) as f64;
        for i in 0..dim {
            for j in i..dim {
                // Exactly symmetric (the product's two halves may differ in the last bit).
                let v = 0.5 * (cov[i * dim + j] + cov[j * dim + i]) * scale;
                cov[i * dim + j] = v;
                cov[j * dim + i] = v;
            }
        }
        Ok(FeatureStats {
            dim,
            count: n,
            mean,
            cov,
        })
    }
}

/// Fréchet distance `‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr √(Σ1 Σ2)`.
///
/// `tr √(Σ1 Σ2)` is computed as `Σ √λ` over the eigenvalues λ of the symmetric positive
/// semi-definite `√Σ1 · Σ2 · √Σ1` (similar to `Σ1 Σ2`, so same eigenvalues), with `√Σ1` from a
/// symmetric eigendecomposition ([`sym_eigen`]) and negative round-off eigenvalues clamped to 0. This avoids the
/// complex arithmetic and the "singular product" fallback of `scipy.linalg.sqrtm` on the
/// non-symmetric `Σ1 Σ2` that pytorch-fid uses, and agrees with it where that is well-defined
/// (tests/metrics.rs: ≤ 1e-6 relative on the golden features).
pub fn fid(a: &FeatureStats, b: &FeatureStats) -> f64 {
    assert_eq!(a.dim, b.dim, "FID of feature sets of different dimensions");
    let d = a.dim;
    let mean_term: f64 = a
        .mean
        .iter()
        .zip(&b.mean)
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    let tr = |m: &[f64]| (0..d).map(|i| m[i * d + i]).sum::<f64>();
    let sqrt_a = sym_sqrt(&a.cov, d);
    let m = matmul(&matmul(&sqrt_a, &b.cov, d), &sqrt_a, d);
    let m = symmetrize(m, d);
    let eig = sym_eigenvalues(&m, d);
    let tr_covmean: f64 = eig.iter().map(|&l| l.max(0.0).sqrt()).sum();
    mean_term + tr(&a.cov) + tr(&b.cov) - 2.0 * tr_covmean
}

/// Inception Score of class logits (`count x classes`, row-major) over `splits` equal parts,
/// the original formula (Salimans et al.; torch-fidelity): per part,
/// `exp(mean_x KL(p(y|x) ‖ p(y)))` with `p(y)` the part's mean; returns (mean, population std)
/// over parts. Part `k` is rows `k·N/splits .. (k+1)·N/splits` (integer division).
pub fn inception_score(
    logits: &[f32],
    classes: usize,
    splits: usize,
) -> Result<(f64, f64), MetricsError> {
    if classes < 2 || !logits.len().is_multiple_of(classes) {
        return Err(MetricsError::Input(format!(
            "{} logits are not a whole number of rows of {classes} classes (need ≥ 2 classes)",
            logits.len()
        )));
    }
    let n = logits.len() / classes;
    if splits == 0 || n < splits {
        return Err(MetricsError::Input(format!(
            "Inception Score with {splits} splits needs at least {splits} images, got {n}"
        )));
    }
    let probs: Vec<f64> = logits
        .chunks_exact(classes)
        .flat_map(|row| {
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(move |v| v / s)
        })
        .collect();
    let mut scores = Vec::with_capacity(splits);
    for k in 0..splits {
        let (lo, hi) = (k * n / splits, (k + 1) * n / splits);
        let rows = &probs[lo * classes..hi * classes];
        let m = (hi - lo) as f64;
        let mut py = vec![0f64; classes];
        for row in rows.chunks_exact(classes) {
            for (p, &v) in py.iter_mut().zip(row) {
                *p += v;
            }
        }
        for p in &mut py {
            *p /= m;
        }
        let mut kl = 0.0;
        for row in rows.chunks_exact(classes) {
            for (&p, &q) in row.iter().zip(&py) {
                if p > 0.0 {
                    kl += p * (p.ln() - q.ln());
                }
            }
        }
        scores.push((kl / m).exp());
    }
    let mean = scores.iter().sum::<f64>() / splits as f64;
    let var = scores.iter().map(|s| (s - mean) * (s - mean)).sum::<f64>() / splits as f64;
    Ok((mean, var.sqrt()))
}

/// CLIP score of one image/text embedding pair: `100 · max(cos(image, text), 0)`
/// (torchmetrics' `CLIPScore`, Hessel et al.'s CLIPScore with w = 100).
pub fn clip_score(image_embed: &[f32], text_embed: &[f32]) -> f64 {
    assert_eq!(
        image_embed.len(),
        text_embed.len(),
        "embedding sizes differ"
    );
    let dot: f64 = image_embed
        .iter()
        .zip(text_embed)
        .map(|(&a, &b)| a as f64 * b as f64)
        .sum();
    let na: f64 = image_embed
        .iter()
        .map(|&a| a as f64 * a as f64)
        .sum::<f64>()
        .sqrt();
    let nb: f64 = text_embed
        .iter()
        .map(|&b| b as f64 * b as f64)
        .sum::<f64>()
        .sqrt();
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    (100.0 * dot / (na * nb)).max(0.0)
}

/// `C = A·B` for `d x d` row-major matrices through the `gemm` crate (SIMD, all cores): the
/// 2048-d products of FID are most of its arithmetic.
fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    gemm_f64(a, b, d, d, d, false)
}

/// `C (m x n) = op(A) · B` with `A` row-major `m x k` (or, when `a_transposed`, row-major
/// `k x m` read as its transpose) and `B` row-major `k x n`.
fn gemm_f64(a: &[f64], b: &[f64], m: usize, n: usize, k: usize, a_transposed: bool) -> Vec<f64> {
    assert!(
        a.len() == m * k && b.len() == k * n,
        "gemm_f64: buffer sizes"
    );
    let mut c = vec![0f64; m * n];
    if m == 0 || n == 0 || k == 0 {
        return c;
    }
    let (a_cs, a_rs) = if a_transposed {
        (m as isize, 1)
    } else {
        (1, k as isize)
    };
    // SAFETY: every pointer addresses a live buffer of exactly the size asserted above, walked
    // with the strides of its row-major layout; `c` is not aliased by `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
    c
}

fn symmetrize(mut m: Vec<f64>, d: usize) -> Vec<f64> {
    for i in 0..d {
        for j in i + 1..d {
            let v = 0.5 * (m[i * d + j] + m[j * d + i]);
            m[i * d + j] = v;
            m[j * d + i] = v;
        }
    }
    m
}

/// Square root of a symmetric PSD matrix: `Σ_k √max(λ_k, 0) v_k v_kᵀ`.
fn sym_sqrt(a: &[f64], d: usize) -> Vec<f64> {
    let (eig, w) = sym_eigen(a, d);
    let mut out = vec![0f64; d * d];
    for (k, &l) in eig.iter().enumerate() {
        let s = l.max(0.0).sqrt();
        if s == 0.0 {
            continue;
        }
        let v = &w[k * d..(k + 1) * d];
        for i in 0..d {
            let si = s * v[i];
            let row = &mut out[i * d..(i + 1) * d];
            for (o, vj) in row.iter_mut().zip(v) {
                *o += si * vj;
            }
        }
    }
    symmetrize(out, d)
}

/// Eigenvalues and eigenvectors (row `k` of the returned `d x d` matrix is the unit eigenvector
/// of eigenvalue `k`) of a symmetric matrix: Householder reduction to tridiagonal form, then the
/// implicit QL method (EISPACK `tred2`/`tql2`, in the arrangement of the public-domain JAMA
/// library). O(d³), walking contiguous memory; the unit tests check it against cyclic Jacobi
/// (`jacobi_eigen`), which is simpler but several times slower. A whole 2048-d FID (two
/// decompositions and two products) is tens of seconds on one loaded core
/// (tests/metrics.rs `fid_at_2048_dimensions`).
pub(crate) fn sym_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let (d, w) = tridiagonal_ql(a, n, true);
    (d, w.expect("vectors were asked for"))
}

/// Eigenvalues only of a symmetric matrix ([`sym_eigen`] without accumulating the
/// transformations: about a third of the work).
pub(crate) fn sym_eigenvalues(a: &[f64], n: usize) -> Vec<f64> {
    tridiagonal_ql(a, n, false).0
}

// Index loops on purpose: the code follows tred2/tql2 line by line, which is what makes it checkable.
#[allow(clippy::needless_range_loop)]
fn tridiagonal_ql(a: &[f64], n: usize, vectors: bool) -> (Vec<f64>, Option<Vec<f64>>) {
    if n == 0 {
        return (Vec::new(), vectors.then(Vec::new));
    }
    let mut v = a.to_vec();
    let mut d = vec![0f64; n];
    let mut e = vec![0f64; n];
    // Column-major: the algorithm walks down columns, which are then contiguous (row-major
    // storage made the 2048-d case cache-bound, minutes instead of seconds). `a` is symmetric,
    // so its row-major copy is its column-major copy.
    let at = |i: usize, j: usize| j * n + i;
    // tred2: Householder tridiagonalisation, accumulating the transformations in v.
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
    }
    for i in (1..n).rev() {
        let mut scale = 0.0;
        let mut h = 0.0;
        for k in 0..i {
            scale += d[k].abs();
        }
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
                v[at(j, i)] = 0.0;
            }
        } else {
            for k in 0..i {
                d[k] /= scale;
                h += d[k] * d[k];
            }
            let mut f = d[i - 1];
            let mut g = h.sqrt();
            if f > 0.0 {
                g = -g;
            }
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            for ej in e.iter_mut().take(i) {
                *ej = 0.0;
            }
            for j in 0..i {
                f = d[j];
                v[at(j, i)] = f;
                g = e[j] + v[at(j, j)] * f;
                for k in j + 1..i {
                    g += v[at(k, j)] * d[k];
                    e[k] += v[at(k, j)] * f;
                }
                e[j] = g;
            }
            f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                f = d[j];
                g = e[j];
                for k in j..i {
                    v[at(k, j)] -= f * e[k] + g * d[k];
                }
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
            }
        }
        d[i] = h;
    }
    if !vectors {
        // The tridiagonal's diagonal is where the accumulation below would pick it up from.
        for i in 0..n {
            d[i] = v[at(i, i)];
        }
        e[0] = 0.0;
        let mut unused = Vec::new();
        tql2(&mut d, &mut e, &mut unused, n, false);
        return (d, None);
    }
    for i in 0..n - 1 {
        v[at(n - 1, i)] = v[at(i, i)];
        v[at(i, i)] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = v[at(k, i + 1)] / h;
            }
            for j in 0..=i {
                let mut g = 0.0;
                for k in 0..=i {
                    g += v[at(k, i + 1)] * v[at(k, j)];
                }
                for k in 0..=i {
                    v[at(k, j)] -= g * d[k];
                }
            }
        }
        for k in 0..=i {
            v[at(k, i + 1)] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
        v[at(n - 1, j)] = 0.0;
    }
    v[at(n - 1, n - 1)] = 1.0;
    e[0] = 0.0;
    // Column k of v (column-major) is row k of `w` (row-major): tql2's rotations mix columns of
    // v, i.e. contiguous rows of w.
    let mut w = v;
    tql2(&mut d, &mut e, &mut w, n, true);
    (d, Some(w))
}

/// tql2: implicit QL on the tridiagonal (diagonal `d`, sub-diagonal `e[1..]`), rotating the
/// rows of `w` along when `vectors`. Eigenvalues are left in `d`.
#[allow(clippy::needless_range_loop)]
fn tql2(d: &mut [f64], e: &mut [f64], w: &mut [f64], n: usize, vectors: bool) {
    // tql2: implicit QL on the tridiagonal (d, e).
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1: f64 = 0.0;
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n - 1 && e[m].abs() > eps * tst1 {
            m += 1;
        }
        if m > l {
            for _iter in 0..64 {
                let mut g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let mut h = g - d[l];
                for di in d.iter_mut().skip(l + 2) {
                    *di -= h;
                }
                f += h;
                p = d[m];
                let (mut c, mut c2, mut c3) = (1.0, 1.0, 1.0);
                let el1 = e[l + 1];
                let (mut s, mut s2) = (0.0, 0.0);
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    g = c * e[i];
                    h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    if !vectors {
                        continue;
                    }
                    let (lo, hi) = w.split_at_mut((i + 1) * n);
                    let (wi, wi1) = (&mut lo[i * n..(i + 1) * n], &mut hi[..n]);
                    for (a, b) in wi.iter_mut().zip(wi1.iter_mut()) {
                        let hb = *b;
                        *b = s * *a + c * hb;
                        *a = c * *a - s * hb;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
}

/// Eigenvalues (and, if asked, eigenvectors as the columns of a row-major matrix) of a symmetric
/// matrix by the cyclic Jacobi method (the unit tests' independent check of [`sym_eigen`]): rotations that zero each off-diagonal element in turn,
/// until the off-diagonal mass is negligible against the diagonal. Quadratically convergent and
/// accurate to a few ulps of the largest eigenvalue for symmetric input; O(d³) per sweep, so
/// meant for small matrices.
#[cfg(test)]
fn jacobi_eigen(a: &[f64], d: usize, vectors: bool) -> (Vec<f64>, Vec<f64>) {
    let mut m = a.to_vec();
    let mut v = if vectors {
        let mut v = vec![0f64; d * d];
        for i in 0..d {
            v[i * d + i] = 1.0;
        }
        v
    } else {
        Vec::new()
    };
    for _sweep in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[i * d + j] * m[i * d + j])
            .sum();
        let diag: f64 = (0..d).map(|i| m[i * d + i] * m[i * d + i]).sum();
        if off <= 1e-30 * diag.max(f64::MIN_POSITIVE) || off == 0.0 {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = m[p * d + q];
                if apq == 0.0 {
                    continue;
                }
                let (app, aqq) = (m[p * d + p], m[q * d + q]);
                let theta = (aqq - app) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..d {
                    let (mkp, mkq) = (m[k * d + p], m[k * d + q]);
                    m[k * d + p] = c * mkp - s * mkq;
                    m[k * d + q] = s * mkp + c * mkq;
                }
                for k in 0..d {
                    let (mpk, mqk) = (m[p * d + k], m[q * d + k]);
                    m[p * d + k] = c * mpk - s * mqk;
                    m[q * d + k] = s * mpk + c * mqk;
                }
                if vectors {
                    for k in 0..d {
                        let (vkp, vkq) = (v[k * d + p], v[k * d + q]);
                        v[k * d + p] = c * vkp - s * vkq;
                        v[k * d + q] = s * vkp + c * vkq;
                    }
                }
            }
        }
    }
    ((0..d).map(|i| m[i * d + i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_reconstructs_a_symmetric_matrix() {
        let a = [4.0, 1.0, 2.0, 1.0, 3.0, 0.5, 2.0, 0.5, 5.0];
        let (l, v) = jacobi_eigen(&a, 3, true);
        for i in 0..3 {
            for j in 0..3 {
                let r: f64 = (0..3).map(|k| v[i * 3 + k] * l[k] * v[j * 3 + k]).sum();
                assert!((r - a[i * 3 + j]).abs() < 1e-12, "{i},{j}: {r}");
            }
        }
        let s = sym_sqrt(&a, 3);
        let s2 = matmul(&s, &s, 3);
        for (x, y) in s2.iter().zip(&a) {
            assert!((x - y).abs() < 1e-12);
        }
    }

    /// Householder + QL against cyclic Jacobi on random symmetric matrices, full rank and
    /// rank-deficient (a covariance of fewer samples than dimensions, as small FID sets give).
    #[test]
    fn ql_agrees_with_jacobi() {
        let mut state = 0x2545f4914f6cdd1du64;
        let mut rnd = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        for (n, rank) in [(1, 1), (2, 2), (7, 7), (24, 24), (24, 5), (40, 40)] {
            let x: Vec<f64> = (0..n * rank).map(|_| rnd()).collect();
            let mut a = vec![0f64; n * n];
            for i in 0..n {
                for j in 0..n {
                    a[i * n + j] = (0..rank).map(|k| x[i * rank + k] * x[j * rank + k]).sum();
                }
            }
            let (mut l1, w) = sym_eigen(&a, n);
            // A v = λ v for every returned pair, and V orthonormal.
            for k in 0..n {
                let v = &w[k * n..(k + 1) * n];
                for i in 0..n {
                    let av: f64 = (0..n).map(|j| a[i * n + j] * v[j]).sum();
                    assert!((av - l1[k] * v[i]).abs() < 1e-10, "n {n} k {k}");
                }
                let norm: f64 = v.iter().map(|x| x * x).sum();
                assert!((norm - 1.0).abs() < 1e-10);
            }
            let mut l3 = sym_eigenvalues(&a, n);
            l3.sort_by(f64::total_cmp);
            let (mut l2, _) = jacobi_eigen(&a, n, false);
            l1.sort_by(f64::total_cmp);
            l2.sort_by(f64::total_cmp);
            for ((p, q), r) in l1.iter().zip(&l2).zip(&l3) {
                assert!((p - q).abs() < 1e-10, "n {n}: {p} vs {q}");
                assert!((r - q).abs() < 1e-10, "n {n}, values only: {r} vs {q}");
            }
        }
    }

    #[test]
    fn identical_sets_have_zero_fid() {
        let f: Vec<f32> = (0..40).map(|i| ((i * 7) % 11) as f32 * 0.3).collect();
        let s = FeatureStats::from_features(&f, 4).unwrap();
        assert!(fid(&s, &s).abs() < 1e-9);
    }
}
