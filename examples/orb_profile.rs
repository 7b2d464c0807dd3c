//! Profiling / regression driver for ORB (not part of the library API).
//!
//! `cargo run --release --example orb_profile -- MODE [args]`
//! * `time RAW W H N ITERS [small]`: time detect_and_compute on N raw
//!   W x H images (`small`: nfeatures=100, edge=patch=15), one thread.
//! * `dump RAW W H N OUT [small]`: write keypoints + descriptors (golden file).
//! * `batch FILELIST ITERS [small]`: time extract_batch (decode + ORB) on the
//!   files of FILELIST with rayon's global pool.
use std::io::Write;
use std::time::Instant;

use bovw::features::orb::{Orb, OrbParams};
use bovw::features::{extract_batch, Descriptors, FeatureExtractor};
use bovw::image::GrayView;

/// CPU time of this thread (ns), from /proc/thread-self/schedstat: robust
/// to other processes competing for the cores.
fn cpu_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    s.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn params(small: bool) -> OrbParams {
    if small {
        OrbParams { n_features: 100, edge_threshold: 15, patch_size: 15, ..Default::default() }
    } else {
        OrbParams::default()
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    match a[1].as_str() {
        "time" | "dump" => {
            let raw = std::fs::read(&a[2]).unwrap();
            let (w, h, n): (usize, usize, usize) = (a[3].parse().unwrap(), a[4].parse().unwrap(), a[5].parse().unwrap());
            let small = a.last().unwrap() == "small";
            let orb = Orb::new(params(small)).unwrap();
            let imgs: Vec<&[u8]> = (0..n).map(|i| &raw[i * w * h..(i + 1) * w * h]).collect();
            if a[1] == "time" {
                let iters: usize = a[6].parse().unwrap();
                let (mut best, mut best_cpu) = (f64::INFINITY, f64::INFINITY);
                for _ in 0..iters {
                    let t = Instant::now();
                    let c = cpu_ns();
                    for im in &imgs {
                        std::hint::black_box(orb.detect_and_compute(GrayView::new(im, w, h), None).unwrap());
                    }
                    best_cpu = best_cpu.min((cpu_ns() - c) as f64 * 1e-9);
                    best = best.min(t.elapsed().as_secs_f64());
                }
                println!("{:.1} us/image wall, {:.1} us/image thread CPU", best / n as f64 * 1e6, best_cpu / n as f64 * 1e6);
            } else {
                let mut f = std::fs::File::create(&a[6]).unwrap();
                for im in &imgs {
                    let (k, d) = orb.detect_and_compute(GrayView::new(im, w, h), None).unwrap();
                    writeln!(f, "n {}", k.len()).unwrap();
                    for kp in &k {
                        writeln!(f, "{:?} {:?} {:?} {:?} {:?} {}", kp.x, kp.y, kp.size, kp.angle, kp.response, kp.octave).unwrap();
                    }
                    if let Descriptors::U8 { data, .. } = d {
                        for row in data.chunks(32) {
                            writeln!(f, "{:02x?}", row).unwrap();
                        }
                    }
                }
            }
        }
        "batch" => {
            let list = std::fs::read_to_string(&a[2]).unwrap();
            let iters: usize = a[3].parse().unwrap();
            let small = a.last().unwrap() == "small";
            let orb = Orb::new(params(small)).unwrap();
            let bytes: Vec<Vec<u8>> = list.lines().map(|p| std::fs::read(p).unwrap()).collect();
            let contents: Vec<Option<&[u8]>> = bytes.iter().map(|b| Some(b.as_slice())).collect();
            let mut best = f64::INFINITY;
            for _ in 0..iters {
                let t = Instant::now();
                std::hint::black_box(extract_batch(&contents, &orb));
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!("{:.2} ms/batch of {}", best * 1e3, contents.len());
        }
        _ => panic!("mode"),
    }
}
