//! A mutation fuzzer for the decoders and extractors, on stable Rust.
//!
//! Each target takes the seed corpus (`fuzz/corpus/`: small JPEGs and PNGs
//! in every layout the decoder handles, written by `fuzz/make_corpus.py`),
//! mutates it with a seeded RNG (bit flips, byte overwrites, truncations,
//! cuts with an end marker appended, splices of two files, duplicated or
//! deleted chunks, inserted markers, trailing bytes, and edits of the size
//! fields of a JPEG frame header or a PNG `IHDR` with its CRC fixed up so
//! that the edit reaches the decoder) and runs every mutant through the
//! target, checking that:
//!
//! - nothing panics (each input runs under `catch_unwind`; an abort or a
//!   stack overflow ends the test binary, which fails it as well);
//! - every failure is a typed [`ImageError`] with a non-empty reason, at
//!   stage `decode` (or `descriptors` for an extractor);
//! - every success is consistent: the size within the limits, buffers of
//!   `width * height` pixels, one keypoint per local descriptor, finite
//!   descriptor values, keypoints inside the image;
//! - no single input takes longer than [`SLOW_INPUT`] (a hang).
//!
//! A failing input is written to `target/fuzz-failures/` and its path
//! printed; with `BOVW_FUZZ_TRACE=1` each input is written to
//! `target/fuzz-failures/<target>-last.bin` before it runs (for an abort,
//! which ends the binary). Inputs kept in `fuzz/regressions/` (crashes found
//! earlier) run through every target first.
//!
//! Bounded by time: `BOVW_FUZZ_SECONDS` per target (default 10, so that
//! `cargo test --release` stays short), `BOVW_FUZZ_SEED` (default 1) picks the
//! mutation sequence, and the figures (inputs tried, decoded, refused,
//! panics) are printed with `--nocapture`. A longer run:
//!
//! ```text
//! BOVW_FUZZ_SECONDS=600 BOVW_FUZZ_SEED=7 cargo test --release --test fuzz -- --nocapture
//! ```

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bovw::error::{ImageError, Stage};
use bovw::features::color::{ColorHistogram, ColorHistogramParams, ColorSpace};
use bovw::features::dsift::{DenseSift, DsiftParams};
use bovw::features::orb::{Orb, OrbParams};
use bovw::features::phow::{Phow, PhowColor, PhowParams};
use bovw::features::sift::{Sift, SiftParams};
use bovw::features::{
    extract_batch_limited, DescriptorKind, Descriptors, Extractor, ImageFeatures, MemoryPolicy, Oversize,
    ResourceLimits,
};
use bovw::image::{decode_image_limited, ColorNeeds, DecodeLimits};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// An input slower than this through one target fails the run (a hang).
const SLOW_INPUT: Duration = Duration::from_secs(30);

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name} must be a non-negative integer, got {v:?}")),
        Err(_) => default,
    }
}

fn seconds() -> f64 {
    match std::env::var("BOVW_FUZZ_SECONDS") {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("BOVW_FUZZ_SECONDS must be a number, got {v:?}")),
        Err(_) => 10.0,
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_dir_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file() && e.file_name() != "README.md")
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    out.sort();
    out
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let c = read_dir_files(&repo().join("fuzz").join("corpus"));
    assert!(c.len() >= 10, "fuzz/corpus holds {} files; run fuzz/make_corpus.py", c.len());
    c
}

// -- mutations ---------------------------------------------------------------------------------

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Offset of the height field of the first JPEG frame header (SOF0-SOF15
/// except DHT, JPG, DAC), if any: `FF Cn len(2) precision(1) height(2) width(2)`.
fn jpeg_sof_size_offset(b: &[u8]) -> Option<usize> {
    let mut i = 2;
    while i + 9 < b.len() {
        if b[i] != 0xFF {
            return None;
        }
        let m = b[i + 1];
        if (0xC0..=0xCF).contains(&m) && m != 0xC4 && m != 0xC8 && m != 0xCC {
            return Some(i + 5);
        }
        if m == 0xDA {
            return None;
        }
        let len = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
        i += 2 + len;
    }
    None
}

/// A size that probes the edges: 0, 1, small, the limits and past them.
fn interesting_side(rng: &mut ChaCha8Rng) -> u32 {
    const SIDES: [u32; 12] = [0, 1, 2, 7, 8, 9, 16, 17, 1024, 16_384, 16_385, 65_535];
    if rng.random_bool(0.7) {
        SIDES[rng.random_range(0..SIDES.len())]
    } else {
        rng.random_range(0..70_000)
    }
}

/// Set a new width and/or height in the header (JPEG SOF, or PNG IHDR with
/// its CRC recomputed so that the PNG decoder reads on).
fn edit_size(d: &mut [u8], rng: &mut ChaCha8Rng) {
    let (w, h) = (interesting_side(rng), interesting_side(rng));
    let which = rng.random_range(0..3); // width, height, both
    if d.starts_with(b"\x89PNG") && d.len() >= 33 {
        if which != 1 {
            d[16..20].copy_from_slice(&w.to_be_bytes());
        }
        if which != 0 {
            d[20..24].copy_from_slice(&h.to_be_bytes());
        }
        let crc = crc32(&d[12..29]);
        d[29..33].copy_from_slice(&crc.to_be_bytes());
    } else if let Some(o) = jpeg_sof_size_offset(d) {
        if which != 0 {
            d[o..o + 2].copy_from_slice(&(h.min(65_535) as u16).to_be_bytes());
        }
        if which != 1 {
            d[o + 2..o + 4].copy_from_slice(&(w.min(65_535) as u16).to_be_bytes());
        }
    }
}

/// One mutant of `seed` (`other`: a second corpus file, for splices).
fn mutate(seed: &[u8], other: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut d = seed.to_vec();
    let n_ops = 1 + rng.random_range(0..3);
    for _ in 0..n_ops {
        if d.is_empty() {
            d.push(rng.random());
        }
        let len = d.len();
        match rng.random_range(0..11) {
            0 => {
                // flip 1-8 bits
                for _ in 0..rng.random_range(1..=8) {
                    let i = rng.random_range(0..len);
                    d[i] ^= 1 << rng.random_range(0..8);
                }
            }
            1 => {
                // overwrite bytes with random or boundary values
                const VALUES: [u8; 6] = [0x00, 0xFF, 0x7F, 0x80, 0x01, 0xFE];
                for _ in 0..rng.random_range(1..=16) {
                    let i = rng.random_range(0..len);
                    d[i] = if rng.random_bool(0.5) { VALUES[rng.random_range(0..VALUES.len())] } else { rng.random() };
                }
            }
            2 => d.truncate(rng.random_range(0..len)),
            3 => {
                // cut, then the end-of-image marker (JPEG) or the IEND chunk (PNG)
                d.truncate(rng.random_range(0..len));
                if seed.starts_with(b"\x89PNG") {
                    d.extend_from_slice(&[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82]);
                } else {
                    d.extend_from_slice(&[0xFF, 0xD9]);
                }
            }
            4 => {
                // splice: head of this one, tail of the other
                let a = rng.random_range(0..=len);
                let b = rng.random_range(0..=other.len());
                d.truncate(a);
                d.extend_from_slice(&other[b..]);
            }
            5 => {
                // duplicate a chunk in place
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..=256)).min(len);
                let chunk = d[a..b].to_vec();
                let at = rng.random_range(0..=len);
                d.splice(at..at, chunk);
            }
            6 => {
                // delete a chunk
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..=256)).min(len);
                d.drain(a..b);
            }
            7 => {
                // insert a marker (SOI, EOI, SOS, DHT, DQT, RSTn, SOF2) or stuffing
                const MARKERS: [[u8; 2]; 9] = [
                    [0xFF, 0xD8], [0xFF, 0xD9], [0xFF, 0xDA], [0xFF, 0xC4], [0xFF, 0xDB],
                    [0xFF, 0xD0], [0xFF, 0xD7], [0xFF, 0xC2], [0xFF, 0x00],
                ];
                let at = rng.random_range(0..=len);
                let m = MARKERS[rng.random_range(0..MARKERS.len())];
                d.splice(at..at, m);
            }
            8 => {
                // trailing bytes (which may hold markers)
                let n = rng.random_range(1..=64);
                for _ in 0..n {
                    d.push(if rng.random_bool(0.2) { 0xFF } else { rng.random() });
                }
            }
            9 => edit_size(&mut d, rng),
            _ => {
                // a 16-bit length field (JPEG segment or PNG chunk) set to an edge value
                let i = rng.random_range(0..len.saturating_sub(1).max(1));
                let v: u16 = [0, 1, 2, 0xFFFF, 0x7FFF, rng.random()][rng.random_range(0..6)];
                if i + 2 <= len {
                    d[i..i + 2].copy_from_slice(&v.to_be_bytes());
                }
            }
        }
    }
    d
}

// -- targets -----------------------------------------------------------------------------------

/// The figures of one target's run.
#[derive(Debug, Default)]
struct Tally {
    inputs: u64,
    ok: u64,
    refused: u64,
    failures: Vec<String>,
    slowest: Duration,
}

type Check = dyn Fn(&[u8]) -> Result<bool, String>;

/// Run `check` on `input` (panics caught); record what happened.
fn run_one(name: &str, input: &[u8], check: &Check, tally: &mut Tally) {
    if std::env::var_os("BOVW_FUZZ_TRACE").is_some() {
        // an abort ends the binary before the input is reported: keep each one first
        let dir = repo().join("target").join("fuzz-failures");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}-last.bin")), input).unwrap();
    }
    let t = Instant::now();
    let r = catch_unwind(AssertUnwindSafe(|| check(input)));
    let dt = t.elapsed();
    tally.inputs += 1;
    tally.slowest = tally.slowest.max(dt);
    let problem = match r {
        Ok(Ok(true)) => {
            tally.ok += 1;
            None
        }
        Ok(Ok(false)) => {
            tally.refused += 1;
            None
        }
        Ok(Err(why)) => Some(why),
        Err(p) => Some(format!(
            "panic: {}",
            p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
        )),
    };
    let problem = problem.or_else(|| (dt > SLOW_INPUT).then(|| format!("took {dt:?} (over {SLOW_INPUT:?})")));
    if let Some(why) = problem {
        let dir = repo().join("target").join("fuzz-failures");
        std::fs::create_dir_all(&dir).unwrap();
        let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        let path = dir.join(format!("{name}-{hash:016x}.bin"));
        std::fs::write(&path, input).unwrap();
        tally.failures.push(format!("{}: {why}", path.display()));
    }
}

/// A typed refusal: stage decode (or descriptors when `extractor`), a reason.
fn check_error(e: &ImageError, extractor: bool) -> Result<bool, String> {
    if e.reason.trim().is_empty() {
        return Err(format!("error with an empty reason at stage {:?}", e.stage));
    }
    match e.stage {
        Stage::Decode => Ok(false),
        Stage::Descriptors if extractor => Ok(false),
        s => Err(format!("error at stage {s:?}: {}", e.reason)),
    }
}

fn decode_check(limits: DecodeLimits) -> impl Fn(&[u8]) -> Result<bool, String> {
    move |b: &[u8]| {
        let needs = ColorNeeds { gray: true, rgb: true };
        match decode_image_limited(b, needs, &limits) {
            Err(e) => check_error(&e, false),
            Ok(img) => {
                let (w, h) = (img.width, img.height);
                if w == 0 || h == 0 || w as u64 > limits.max_side || h as u64 > limits.max_side
                    || (w * h) as u64 > limits.max_pixels
                {
                    return Err(format!("decoded to {w}x{h}, outside the limits {limits:?}"));
                }
                let g = img.gray().ok_or("no gray layout")?;
                let c = img.rgb().ok_or("no rgb layout")?;
                if g.data.len() != w * h || c.data.len() != 3 * w * h {
                    return Err(format!("{w}x{h} with {} gray and {} rgb bytes", g.data.len(), c.data.len()));
                }
                Ok(true)
            }
        }
    }
}

fn check_features(f: &ImageFeatures, kind: DescriptorKind, width: usize, limits: &ResourceLimits) -> Result<(), String> {
    let (w, h) = (f.width, f.height);
    if w == 0 || h == 0 || (w as u64 * h as u64) > limits.decode.max_pixels {
        return Err(format!("features of a {w}x{h} image, outside the limits"));
    }
    if !(f.scale > 0.0 && f.scale <= 1.0) {
        return Err(format!("scale {}", f.scale));
    }
    let (n, finite) = match &f.descriptors {
        Descriptors::F32 { data, width: dw } => (data.len() / width.max(1), *dw == width && data.iter().all(|v| v.is_finite())),
        Descriptors::U8 { data, width: dw } => (data.len() / width.max(1), *dw == width),
    };
    if !finite {
        return Err("descriptor width differs or values not finite".into());
    }
    match kind {
        DescriptorKind::Local if f.keypoints.len() != n => {
            return Err(format!("{} keypoints for {n} descriptors", f.keypoints.len()))
        }
        DescriptorKind::Global if n != 1 => return Err(format!("a global descriptor with {n} rows")),
        _ => {}
    }
    for k in &f.keypoints {
        let inside = k.x.is_finite() && k.y.is_finite() && k.size.is_finite() && k.angle.is_finite()
            && k.x >= -1.0 && k.y >= -1.0 && k.x <= w as f32 && k.y <= h as f32;
        if !inside {
            return Err(format!("keypoint {k:?} outside a {w}x{h} image"));
        }
    }
    Ok(())
}

fn extract_check<E: Extractor>(extractor: E, limits: ResourceLimits) -> impl Fn(&[u8]) -> Result<bool, String> {
    move |b: &[u8]| {
        let info = extractor.info();
        let mut out = extract_batch_limited(&[Some(b)], &extractor, &limits);
        if out.len() != 1 {
            return Err(format!("{} rows for 1 input", out.len()));
        }
        match out.pop().unwrap() {
            Err(e) => check_error(&e, true),
            Ok(f) => check_features(&f, info.kind, info.width, &limits).map(|_| true),
        }
    }
}

/// Fuzz one target for [`seconds`]; fail with every failing input's path.
fn fuzz(name: &str, seed_offset: u64, check: &Check) {
    let seeds = corpus();
    let mut tally = Tally::default();
    // the unmutated corpus, and every earlier crash, first
    for (_, b) in seeds.iter().chain(read_dir_files(&repo().join("fuzz").join("regressions")).iter()) {
        run_one(name, b, check, &mut tally);
    }
    let seed = env_u64("BOVW_FUZZ_SEED", 1);
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(1000).wrapping_add(seed_offset));
    let budget = Duration::from_secs_f64(seconds());
    let start = Instant::now();
    while start.elapsed() < budget {
        let a = &seeds[rng.random_range(0..seeds.len())].1;
        let b = &seeds[rng.random_range(0..seeds.len())].1;
        let m = mutate(a, b, &mut rng);
        run_one(name, &m, check, &mut tally);
    }
    println!(
        "fuzz {name}: {} inputs in {:.1} s (seed {seed}): {} accepted, {} refused with a typed error, {} failures; slowest \
         input {:.3} s",
        tally.inputs,
        start.elapsed().as_secs_f64(),
        tally.ok,
        tally.refused,
        tally.failures.len(),
        tally.slowest.as_secs_f64()
    );
    assert!(tally.failures.is_empty(), "fuzz {name}: {} failing inputs:\n{}", tally.failures.len(), tally.failures.join("\n"));
}

/// The extractors run on images up to 1 megapixel (a mutated header asks
/// for up to 65535 x 65535), so that one input stays well under a second.
fn small_limits(oversize: Oversize) -> ResourceLimits {
    ResourceLimits {
        decode: DecodeLimits { max_pixels: 1 << 20, max_side: 4096 },
        memory: MemoryPolicy { max_image_memory: 64 << 20, oversize },
    }
}

#[test]
fn fuzz_decode() {
    // the default limits (50 megapixels, 16384 a side), as a user gets them
    fuzz("decode", 1, &decode_check(DecodeLimits::default()));
}

#[test]
fn fuzz_sift() {
    let sift = Sift::new(SiftParams::default()).unwrap();
    fuzz("sift", 2, &extract_check(sift, small_limits(Oversize::Downscale)));
}

#[test]
fn fuzz_orb() {
    let orb = Orb::new(OrbParams::default()).unwrap();
    fuzz("orb", 3, &extract_check(orb, small_limits(Oversize::Refuse)));
}

#[test]
fn fuzz_dense_sift_and_phow() {
    let dsift = DenseSift::new(DsiftParams { step: 4, bin_size: 4, ..DsiftParams::default() }).unwrap();
    let phow = Phow::new(PhowParams { color: PhowColor::Hsv, ..PhowParams::default() }).unwrap();
    let (a, b) = (extract_check(dsift, small_limits(Oversize::Refuse)), extract_check(phow, small_limits(Oversize::Refuse)));
    fuzz("dense", 4, &move |bytes: &[u8]| {
        let x = a(bytes)?;
        let y = b(bytes)?;
        if x != y {
            return Err(format!("dense SIFT accepted={x}, PHOW accepted={y}: one image, two answers"));
        }
        Ok(x)
    });
}

#[test]
fn fuzz_color_histogram() {
    let hsv = ColorHistogram::new(ColorHistogramParams::default()).unwrap();
    let opp = ColorHistogram::new(ColorHistogramParams {
        space: ColorSpace::Opponent,
        grid: vec![1, 2, 4],
        ..ColorHistogramParams::default()
    })
    .unwrap();
    let (a, b) = (extract_check(hsv, small_limits(Oversize::Refuse)), extract_check(opp, small_limits(Oversize::Refuse)));
    fuzz("color", 5, &move |bytes: &[u8]| {
        let x = a(bytes)?;
        b(bytes)?;
        Ok(x)
    });
}

/// The mutators themselves: a size edit of a PNG keeps its header CRC valid,
/// so that the decoder reads the new size (and refuses it by the limits).
#[test]
fn size_edit_reaches_the_decoder() {
    let seeds = corpus();
    let png = &seeds.iter().find(|(n, _)| n == "png_rgb.png").unwrap().1;
    let mut d = png.clone();
    d[16..20].copy_from_slice(&60_000u32.to_be_bytes());
    d[20..24].copy_from_slice(&60_000u32.to_be_bytes());
    let crc = crc32(&d[12..29]);
    d[29..33].copy_from_slice(&crc.to_be_bytes());
    let e = decode_image_limited(&d, ColorNeeds::GRAY, &DecodeLimits::default()).unwrap_err();
    assert!(e.reason.contains("60000x60000"), "{}", e.reason);
    let jpg = &seeds.iter().find(|(n, _)| n == "jpeg_baseline_420.jpg").unwrap().1;
    let mut d = jpg.clone();
    let o = jpeg_sof_size_offset(&d).unwrap();
    d[o..o + 4].copy_from_slice(&[0x75, 0x30, 0x75, 0x30]); // 30000 x 30000
    let e = decode_image_limited(&d, ColorNeeds::GRAY, &DecodeLimits::default()).unwrap_err();
    assert!(e.reason.contains("30000x30000"), "{}", e.reason);
}
