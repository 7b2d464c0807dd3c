//! Timing of `bovw::decomposition::sytrd` against faer 0.24 (best of `REPS`
//! runs, default 5): `cargo run --release --example sytrd_time [n ...]`
//! (default n = 300 1000 2000; RAYON_NUM_THREADS=1 for one thread).
//! OURS_ONLY=1 times our tridiagonalize alone; APPLY_ONLY=k our apply_q alone.
use bovw::decomposition::sytrd;
use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
use faer::linalg::{evd, householder, qr};
use faer::{Mat, Par};
use std::time::Instant;

fn best<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    let mut b = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        b = b.min(t.elapsed().as_secs_f64());
    }
    b
}

fn main() {
    let sizes: Vec<usize> = {
        let v: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().expect("n")).collect();
        if v.is_empty() {
            vec![300, 1000, 2000]
        } else {
            v
        }
    };
    let reps: usize = std::env::var("REPS").ok().map(|s| s.parse().expect("REPS")).unwrap_or(5);
    println!("threads {}", rayon::current_num_threads());
    for n in sizes {
        let mut seed = n as u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..=i {
                let x = rnd();
                a[i * n + j] = x;
                a[j * n + i] = x;
            }
        }
        let am = Mat::from_fn(n, n, |i, j| a[i * n + j]);
        if let Ok(k) = std::env::var("APPLY_ONLY") {
            let k: usize = k.parse().expect("k");
            let t = sytrd::tridiagonalize(&a, n);
            let v0: Vec<f64> = (0..n * k).map(|_| rnd()).collect();
            let ours = best(reps, || {
                let mut v = v0.clone();
                t.apply_q(&mut v, k);
                std::hint::black_box(v);
            });
            println!("n={n:5} apply_q k={k:3}:     ours {ours:.5} s");
            continue;
        }
        let ours = best(reps, || {
            std::hint::black_box(sytrd::tridiagonalize(&a, n));
        });
        if std::env::var("OURS_ONLY").is_ok() {
            println!("n={n:5} tridiagonalize: ours {ours:.5} s");
            continue;
        }
        let bs = qr::no_pivoting::factor::recommended_block_size::<f64>(n, n);
        let faer_tridiag = |par: Par| {
            let scratch = StackReq::any_of(&[
                evd::tridiag::tridiag_in_place_scratch::<f64>(n, par, Default::default()),
                householder::apply_block_householder_sequence_on_the_left_in_place_scratch::<f64>(n - 1, bs, 324),
            ]);
            let mut mem = MemBuffer::new(scratch);
            let mut trid = Mat::<f64>::zeros(n, n);
            let mut hh = Mat::<f64>::zeros(bs, n - 1);
            let t = best(reps, || {
                trid.copy_from_triangular_lower(am.as_ref());
                evd::tridiag::tridiag_in_place(trid.as_mut(), hh.as_mut(), par, MemStack::new(&mut mem), Default::default());
            });
            (t, trid, hh, mem)
        };
        let (fseq, _, _, _) = faer_tridiag(Par::Seq);
        let par4 = Par::Rayon(std::num::NonZeroUsize::new(4).expect("4"));
        let (fpar, trid, hh, mut mem) = faer_tridiag(par4);
        println!(
            "n={n:5} tridiagonalize: ours {:.5} s | faer Seq {:.5} s | faer Rayon(4) {:.5} s",
            ours, fseq, fpar
        );
        let t = sytrd::tridiagonalize(&a, n);
        for k in [50usize, 324] {
            let v0: Vec<f64> = (0..n * k).map(|_| rnd()).collect();
            let ours = best(reps, || {
                let mut v = v0.clone();
                t.apply_q(&mut v, k);
                std::hint::black_box(v);
            });
            let vm = Mat::from_fn(n, k, |i, c| v0[c * n + i]);
            let fq = |par: Par, mem: &mut MemBuffer| {
                best(reps, || {
                    let mut v = vm.clone();
                    householder::apply_block_householder_sequence_on_the_left_in_place_with_conj(
                        trid.submatrix(1, 0, n - 1, n - 1),
                        hh.as_ref(),
                        faer::Conj::No,
                        v.as_mut().subrows_mut(1, n - 1),
                        par,
                        MemStack::new(mem),
                    );
                    std::hint::black_box(v);
                })
            };
            let fs = fq(Par::Seq, &mut mem);
            let fp = fq(par4, &mut mem);
            println!("n={n:5} apply_q k={k:3}:     ours {:.5} s | faer Seq {:.5} s | faer Rayon(4) {:.5} s", ours, fs, fp);
        }
    }
}
