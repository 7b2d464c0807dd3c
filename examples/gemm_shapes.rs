//! Timing of the crate's own kernels (`decomposition::syrk`, `packed`, the
//! `gemm` crate) against faer's matmul on the job's shapes:
//! `RAYON_NUM_THREADS=1 cargo run --release --example gemm_shapes [scatter|project|kmeans|variants]...`
//! (`REPS=n` calls of each side, in turn; the best is kept).
//!
//! Times are the process's CPU time (`CLOCK_PROCESS_CPUTIME_ID`), not wall
//! time: on a shared machine a single-threaded run's CPU time leaves out
//! the time other processes hold the core. With more than one thread it
//! counts every thread's time (divide by the threads for a wall estimate).
use bovw::cluster::kmeans::gemm_abt;
use bovw::decomposition::{products, syrk};
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// CPU time of this process, in seconds.
fn cpu_now() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid pointer to a timespec; the clock id is a constant.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

struct Instant(f64);
impl Instant {
    fn now() -> Self {
        Instant(cpu_now())
    }
    fn elapsed(&self) -> Elapsed {
        Elapsed(cpu_now() - self.0)
    }
}
struct Elapsed(f64);
impl Elapsed {
    fn as_secs_f64(&self) -> f64 {
        self.0
    }
}

#[allow(dead_code)]
fn best<R>(reps: usize, mut f: impl FnMut() -> R) -> f64 {
    let mut b = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        std::hint::black_box(f());
        b = b.min(t.elapsed().as_secs_f64());
    }
    b
}

/// Best times of `f` and `g`, called in turn `reps` times each.
fn pair<R, S>(reps: usize, mut f: impl FnMut() -> R, mut g: impl FnMut() -> S) -> (f64, f64) {
    let (mut a, mut b) = (f64::MAX, f64::MAX);
    for _ in 0..reps {
        let t = Instant::now();
        std::hint::black_box(f());
        a = a.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        std::hint::black_box(g());
        b = b.min(t.elapsed().as_secs_f64());
    }
    (a, b)
}

fn reps() -> usize {
    std::env::var("REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(7)
}

fn data<T: From<f32>>(n: usize, d: usize, seed: u64) -> Vec<T> {
    let mut s = seed;
    (0..n * d)
        .map(|i| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let u = ((s >> 40) as f32) / (1u64 << 24) as f32;
            T::from(u * (1.0 + (i % d) as f32 * 0.01) + 2.0)
        })
        .collect()
}

trait E: faer::traits::RealField + Copy + Send + Sync + From<f32> + Into<f64> + std::ops::Sub<Output = Self> + 'static {}
impl E for f32 {}
impl E for f64 {}

fn scatter_rows<T: E + syrk::SyrkElem + bovw::decomposition::pca::Sample>(label: &str) {
    for &(n, d) in &[(30_000usize, 100usize), (30_000, 300), (30_000, 1000), (100_000, 128), (100_000, 1000), (20_000, 2000)] {
        let x: Vec<T> = data(n, d, 1);
        let center: Vec<T> = (0..d).map(|_| T::from(2.5)).collect();
        let (own, f) = pair(reps(), || syrk::centered_sums_scatter(&x, d, &center), || products::centered_sums_scatter(&x, d, &center));
        let a = syrk::centered_sums_scatter(&x, d, &center).1;
        let b = products::centered_sums_scatter(&x, d, &center).1;
        let scale = a.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let err = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max) / scale;
        let flop = n as f64 * d as f64 * (d + 1) as f64 / 1e9;
        println!(
            "scatter {label} ({n}, {d}): own {own:.4} s ({:.0} GF/s), faer {f:.4} s ({:.0} GF/s); own/faer {:.2}; max rel diff {err:.1e}",
            flop / own,
            flop / f,
            own / f
        );
    }
}

fn project_rows<T: E + syrk::SyrkElem + bovw::decomposition::pca::Sample>(label: &str) {
    for &(n, d, k) in &[(30_000usize, 100usize, 50usize), (100_000, 128, 79), (30_000, 1000, 324), (30_000, 1000, 50), (100_000, 1000, 300), (20_000, 2000, 500)] {
        let x: Vec<T> = data(n, d, 2);
        let comps: Vec<f64> = data::<f64>(k, d, 3).iter().map(|v| v - 2.5).collect();
        let off = vec![0.0; k];
        let (own, f) = pair(reps(), || bovw::packed::project(&x, d, &comps, &off, None), || products::project(&x, d, &comps, &off, None));
        let flop = 2.0 * n as f64 * d as f64 * k as f64 / 1e9;
        println!(
            "project {label} ({n}, {d}) -> {k}: own {own:.4} s ({:.0} GF/s), faer {f:.4} s ({:.0} GF/s); own/faer {:.2}",
            flop / own,
            flop / f,
            own / f
        );
    }
}

/// Where the faer scatter's time goes (one thread): mode 0 = centring +
/// lower-triangle product + f64 accumulation, 1 = without the accumulation,
/// 2 = a full rectangular product instead, 3 = the products only (no centring).
fn scatter_variant(x: &[f32], d: usize, mode: u8, kb: usize) -> f32 {
    use faer::linalg::matmul::triangular::{self, BlockStructure};
    let mut acc = vec![0.0f64; d * d];
    let mut tmp = vec![0.0f32; d * d];
    let mut xc = vec![0.0f32; kb * d];
    for block in x.chunks(kb * d) {
        let m = block.len() / d;
        if mode != 3 {
            for (o, v) in xc.iter_mut().zip(block) {
                *o = v - 2.5;
            }
        }
        let a = MatRef::from_row_major_slice(&xc[..m * d], m, d);
        let t = MatMut::from_column_major_slice_mut(&mut tmp, d, d);
        if mode == 2 {
            faer::linalg::matmul::matmul(t, Accum::Replace, a.transpose(), a, 1.0, Par::Seq);
        } else {
            triangular::matmul(t, BlockStructure::TriangularLower, Accum::Replace, a.transpose(), BlockStructure::Rectangular, a, BlockStructure::Rectangular, 1.0, Par::Seq);
        }
        if mode == 0 {
            for j in 0..d {
                for i in j..d {
                    acc[j * d + i] += tmp[j * d + i] as f64;
                }
            }
        }
    }
    tmp[1] + acc[1] as f32
}

fn kmeans_rows<T: E + bovw::cluster::kmeans::Real>(label: &str) {
    let d = 128;
    let n = 100_000;
    let x: Vec<T> = data(n, d, 4);
    for &k in &[100usize, 500, 1000] {
        let c: Vec<T> = data(k, d, 5);
        let run_own = || {
            x.par_chunks(256 * d).for_each_init(Vec::new, |buf: &mut Vec<T>, rows| {
                let m = rows.len() / d;
                buf.resize(m * k, T::zero_impl());
                gemm_abt(rows, &c, m, k, d, buf);
            })
        };
        let cm = MatRef::from_row_major_slice(&c, k, d);
        let run_faer = || {
            x.par_chunks(256 * d).for_each_init(Vec::new, |buf: &mut Vec<T>, rows| {
                let m = rows.len() / d;
                buf.resize(m * k, T::zero_impl());
                let a = MatRef::from_row_major_slice(rows, m, d);
                let dst = MatMut::from_row_major_slice_mut(&mut buf[..m * k], m, k);
                faer::linalg::matmul::matmul(dst, Accum::Replace, a, cm.transpose(), T::one_impl(), Par::Seq);
            })
        };
        let (own, f) = pair(reps(), run_own, run_faer);
        let flop = 2.0 * n as f64 * d as f64 * k as f64 / 1e9;
        println!(
            "kmeans X C^T {label} n={n} d={d} K={k} (blocks of 256 rows): gemm crate {own:.4} s ({:.0} GF/s), faer {f:.4} s ({:.0} GF/s); gemm/faer {:.2}",
            flop / own,
            flop / f,
            own / f
        );
    }
}

fn main() {
    let what: Vec<String> = std::env::args().skip(1).collect();
    let on = |w: &str| what.is_empty() || what.iter().any(|a| a == w);
    println!("threads {}", rayon::current_num_threads());
    if on("variants") {
        for &d in &[128usize, 300, 1000, 2000] {
            let x: Vec<f32> = data(30_000, d, 1);
            let c = vec![2.5f32; d];
            let own = best(reps(), || syrk::centered_sums_scatter(&x, d, &c));
            let t: Vec<f64> = (0..4).map(|m| best(reps(), || scatter_variant(&x, d, m, 256))).collect();
            let t512 = best(reps(), || scatter_variant(&x, d, 0, 512));
            let t1k = best(reps(), || scatter_variant(&x, d, 0, 1024));
            println!("scatter f32 (30000, {d}) one group: own {own:.4} s; faer full {:.4} (blocks of 512 rows {t512:.4}, 1024 {t1k:.4}), no accumulation {:.4}, rectangular {:.4}, products only {:.4}", t[0], t[1], t[2], t[3]);
        }
    }
    if on("kmeans") {
        kmeans_rows::<f32>("f32");
        kmeans_rows::<f64>("f64");
    }
    if on("project") {
        project_rows::<f32>("f32");
        project_rows::<f64>("f64");
    }
    if on("scatter") {
        scatter_rows::<f32>("f32");
        scatter_rows::<f64>("f64");
    }
}
