//! Time the JPEG structure check against the whole strict decode, on the
//! files named on the command line (each decoded `REPS` times).
//! `cargo run --release --example decode_profile -- FILE...`
use std::time::Instant;

fn main() {
    let files: Vec<Vec<u8>> = std::env::args().skip(1).map(|p| std::fs::read(p).unwrap()).collect();
    let reps = 5;
    let (mut t_check, mut t_decode, mut t_image) = (f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..reps {
        let t = Instant::now();
        for f in &files {
            bovw::image::jpeg_check::check_jpeg::<String>(f, |_| Ok(())).unwrap();
        }
        t_check = t_check.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for f in &files {
            bovw::image::decode_gray(f).unwrap();
        }
        t_decode = t_decode.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for f in &files {
            image::load_from_memory(f).unwrap();
        }
        t_image = t_image.min(t.elapsed().as_secs_f64());
    }
    let n = files.len() as f64;
    println!(
        "{} files: check {:.1} us, bovw decode_gray {:.1} us, image::load_from_memory {:.1} us per file",
        files.len(),
        t_check / n * 1e6,
        t_decode / n * 1e6,
        t_image / n * 1e6
    );
}
