//! A structural check of a JPEG file's entropy-coded data, before decoding.
//!
//! Decoders are lenient with damaged JPEGs on purpose (browsers show what
//! they can): libjpeg warns and fills the missing blocks, and zune-jpeg (what
//! the `image` crate and bovw decode with) zero-fills the bit stream once it
//! meets a marker, even in its strict mode. A file cut off with an
//! end-of-image marker appended, or one whose scan bytes were overwritten,
//! then decodes "successfully" to an image whose lower part or every block
//! after the damage is wrong. For feature extraction that is garbage in the
//! vocabulary, so bovw refuses such files. This module walks the marker
//! segments (ITU-T T.81, Annex B) and Huffman-decodes every scan without
//! reconstructing pixels (Annex F.2.2 for sequential scans, G.1.2 for
//! progressive ones: only code lengths, run lengths and the
//! successive-approximation history are needed), and reports what libjpeg
//! only warns about:
//!
//! - a scan whose data ends (at a marker or at the end of the file) before
//!   all its blocks are coded: libjpeg's "premature end of data segment";
//! - whole bytes of entropy-coded data left after the last block of a scan or
//!   of a restart interval: libjpeg's "N extraneous bytes before marker" (a
//!   Huffman stream that lost synchronisation after corruption ends at the
//!   wrong place);
//! - a restart marker missing or out of order, a bit pattern that is no
//!   Huffman code of the table, a magnitude category or coefficient index out
//!   of range, a scan that uses an undefined table;
//! - no end-of-image marker after the last scan (a file cut at a scan
//!   boundary, e.g. a progressive JPEG missing its refinement scans).
//!
//! Bytes after the end-of-image marker are ignored: a valid JPEG followed by
//! anything (thumbnails, a second image, `FF DA` bytes) is accepted.
//!
//! The frame header is read before any scan, and its size is handed to a
//! callback so that the caller can refuse an oversized image before this
//! check (or the decoder) allocates anything for it.

/// What the frame header (SOF) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    pub width: usize,
    pub height: usize,
    pub components: usize,
    pub progressive: bool,
}

#[derive(Debug, Clone, Copy)]
struct Component {
    id: u8,
    h: usize,
    v: usize,
    /// Quantisation table id.
    tq: usize,
    /// Blocks per row and per column of the component's own (unpadded) grid.
    blocks_w: usize,
    blocks_h: usize,
}

/// A canonical Huffman table (T.81 Annex C) prepared for decoding.
#[derive(Clone)]
struct Huffman {
    /// `lookup[bits]` for the next [`LOOKAHEAD`] bits: (code length, symbol),
    /// length 0 when the code is longer.
    lookup: Vec<(u8, u8)>,
    /// Largest code of each length 1..=16 (-1: none), as in libjpeg.
    maxcode: [i32; 18],
    /// Index into `symbols` of the first code of each length, minus that code.
    valoffset: [i32; 17],
    symbols: Vec<u8>,
}

const LOOKAHEAD: u32 = 9;

impl Huffman {
    fn new(counts: &[u8; 16], symbols: &[u8]) -> Result<Huffman, String> {
        let mut lookup = vec![(0u8, 0u8); 1 << LOOKAHEAD];
        let mut maxcode = [-1i32; 18];
        let mut valoffset = [0i32; 17];
        let mut code: u32 = 0;
        let mut k = 0usize;
        for len in 1..=16u32 {
            let n = counts[len as usize - 1] as usize;
            if n > 0 {
                valoffset[len as usize] = k as i32 - code as i32;
                for _ in 0..n {
                    if code >= (1 << len) {
                        return Err("corrupt JPEG: invalid Huffman table (too many codes of one length)".into());
                    }
                    if len <= LOOKAHEAD {
                        let shift = LOOKAHEAD - len;
                        for j in (code << shift)..((code + 1) << shift) {
                            lookup[j as usize] = (len as u8, symbols[k]);
                        }
                    }
                    code += 1;
                    k += 1;
                }
                maxcode[len as usize] = code as i32 - 1;
            }
            code <<= 1;
        }
        maxcode[17] = i32::MAX; // sentinel, as libjpeg's maxcode[17]
        Ok(Huffman { lookup, maxcode, valoffset, symbols: symbols.to_vec() })
    }
}

/// Reads the entropy-coded bits of one scan (or restart interval), removing
/// stuffed zero bytes and stopping at the first marker or at the end of the
/// file. Past that point it reads zeros and counts them: `nbits < 0` after a
/// block means the block needed bits the data does not have.
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
    /// Bits not yet consumed, left-aligned.
    acc: u64,
    /// Valid bits in `acc`; negative once zeros past the data were consumed.
    nbits: i32,
    /// The reader stopped at a marker (`data[pos] == 0xFF`, not stuffed).
    at_marker: bool,
    /// No more data will come (a marker or the end of the file).
    at_end: bool,
    /// The first error met inside the current block (reported by
    /// [`BitReader::end_block`], so that the hot loops carry no `Result`).
    error: Option<String>,
}

/// Why the scan data ran out before its last block.
fn premature(at_marker: bool) -> String {
    if at_marker {
        "corrupt JPEG: a marker interrupts the scan data before every block is coded (libjpeg: premature end of \
         data segment; e.g. a cut-off file with an end marker appended)"
            .into()
    } else {
        "truncated JPEG: the file ends inside the scan data, before every block is coded".into()
    }
}

/// Whether a byte of `w` is 0xFF (a zero byte of `!w`).
#[inline]
fn has_ff(w: u64) -> bool {
    let v = !w;
    (v.wrapping_sub(0x0101_0101_0101_0101) & !v & 0x8080_8080_8080_8080) != 0
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        BitReader { data, pos, acc: 0, nbits: 0, at_marker: false, at_end: false, error: None }
    }

    /// Fill `acc` to more than 56 bits, or up to the end of the data.
    #[inline]
    fn refill(&mut self) {
        if self.nbits > 56 || self.at_end {
            return;
        }
        if let Some(b) = self.data.get(self.pos..self.pos + 8) {
            let w = u64::from_be_bytes(b.try_into().expect("8 bytes"));
            if !has_ff(w) {
                let k = ((64 - self.nbits) / 8) as u32; // 1..=8 bytes fit
                let take = if k >= 8 { w } else { w >> (64 - 8 * k) };
                self.acc |= take << (64 - self.nbits as u32 - 8 * k);
                self.nbits += 8 * k as i32;
                self.pos += k as usize;
                return;
            }
        }
        self.refill_slow();
    }

    #[cold]
    fn refill_slow(&mut self) {
        while self.nbits <= 56 {
            let Some(&b) = self.data.get(self.pos) else {
                self.at_end = true;
                return;
            };
            if b == 0xFF {
                match self.data.get(self.pos + 1) {
                    Some(0x00) => self.pos += 2,
                    Some(_) => {
                        self.at_marker = true;
                        self.at_end = true;
                        return;
                    }
                    None => {
                        self.at_end = true; // a lone FF at the end of the file
                        return;
                    }
                }
            } else {
                self.pos += 1;
            }
            self.acc |= (b as u64) << (56 - self.nbits as u32);
            self.nbits += 8;
        }
    }

    /// Read `n` (<= 16) bits as an unsigned number.
    #[inline]
    fn bits(&mut self, n: u32) -> u32 {
        if self.nbits < n as i32 {
            self.refill();
        }
        let v = ((self.acc >> 32) >> (32 - n)) as u32;
        self.acc <<= n;
        self.nbits -= n as i32;
        v
    }

    /// The next Huffman symbol of table `t`; on a bit pattern that is no
    /// code, records the error and returns 0 (which ends the block).
    #[inline(always)]
    fn decode(&mut self, t: &Huffman) -> u8 {
        if self.nbits < 32 {
            self.refill();
        }
        let (len, sym) = t.lookup[(self.acc >> (64 - LOOKAHEAD)) as usize];
        if len > 0 {
            self.acc <<= len;
            self.nbits -= len as i32;
            return sym;
        }
        self.decode_long(t)
    }

    #[cold]
    fn decode_long(&mut self, t: &Huffman) -> u8 {
        let mut l = LOOKAHEAD + 1;
        let mut code = (self.acc >> (64 - l)) as i32;
        while l <= 16 && code > t.maxcode[l as usize] {
            l += 1;
            code = (self.acc >> (64 - l)) as i32;
        }
        let idx = t.valoffset[l.min(16) as usize] + code;
        match t.symbols.get(idx as usize) {
            Some(&sym) if l <= 16 => {
                self.acc <<= l;
                self.nbits -= l as i32;
                sym
            }
            _ => {
                if self.at_end && self.nbits < 16 {
                    self.nbits = -1; // zeros past the data: premature end
                } else {
                    self.fail("corrupt JPEG: a bit pattern in the scan data is no code of its Huffman table".into());
                }
                0
            }
        }
    }

    #[cold]
    fn fail(&mut self, reason: String) {
        if self.error.is_none() {
            self.error = Some(reason);
        }
    }

    /// After each block: the error recorded inside it, if any, or the
    /// premature end if it read zeros past the data.
    #[inline]
    fn end_block(&mut self) -> Result<(), String> {
        if self.nbits < 0 {
            return Err(premature(self.at_marker));
        }
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// After the last block of a scan or restart interval: at most the 7
    /// padding bits of the last byte may be left before the marker.
    fn finish_segment(&mut self, what: &str) -> Result<(), String> {
        self.end_block()?;
        self.refill();
        if self.nbits >= 8 {
            let extra = self.nbits / 8;
            let more = if self.at_end { "" } else { " or more" };
            return Err(format!(
                "corrupt JPEG: {extra}{more} extraneous bytes of scan data after the last block of {what} \
                 (the coded data lost synchronisation)"
            ));
        }
        Ok(())
    }
}

fn u16_at(b: &[u8], i: usize) -> Option<usize> {
    Some(((*b.get(i)? as usize) << 8) | *b.get(i + 1)? as usize)
}

/// One scan's parameters.
struct Scan {
    /// Indices into the frame's components, with their DC and AC table ids.
    comps: Vec<(usize, usize, usize)>,
    ss: usize,
    se: usize,
    ah: u8,
    al: u8,
}

struct State {
    frame: Option<(FrameInfo, Vec<Component>, usize, usize)>,
    dc: [Option<Huffman>; 4],
    ac: [Option<Huffman>; 4],
    /// Quantisation tables, in zig-zag order.
    quant: [Option<[u16; 64]>; 4],
    restart_interval: usize,
    /// Per component: for progressive frames, a bit per zig-zag coefficient
    /// of each block, set once the coefficient is nonzero.
    nonzero: Vec<Vec<u64>>,
    /// Per component: a DC scan (sequential: any scan) has covered it.
    has_dc: Vec<bool>,
    /// Progressive frames, per component and zig-zag index: the successive
    /// approximation bit down to which the coefficient has been coded
    /// (0: full precision; 255: never coded).
    coded_to: Vec<[u8; 64]>,
    scans: usize,
}

/// Check a JPEG file's structure and every scan's entropy-coded data.
///
/// `on_frame` is called with the frame header before anything is allocated
/// for the image; its error is returned as is.
///
/// # Errors
/// A reason ("corrupt JPEG: ...", "truncated JPEG: ...", "unsupported
/// JPEG: ...") when the file is damaged, cut off or of a kind that bovw
/// does not decode (arithmetic coding, lossless, hierarchical, 12-bit).
pub fn check_jpeg<E: From<String>>(
    bytes: &[u8],
    mut on_frame: impl FnMut(&FrameInfo) -> Result<(), E>,
) -> Result<FrameInfo, E> {
    if bytes.len() < 4 || bytes[0] != 0xFF || bytes[1] != 0xD8 {
        return Err(E::from("not a JPEG file (no start-of-image marker)".to_string()));
    }
    let mut st = State {
        frame: None,
        dc: Default::default(),
        ac: Default::default(),
        quant: [None; 4],
        restart_interval: 0,
        nonzero: Vec::new(),
        has_dc: Vec::new(),
        coded_to: Vec::new(),
        scans: 0,
    };
    let mut pos = 2;
    loop {
        // find the next marker; bytes other than FF between segments are
        // skipped as libjpeg does (it warns); fill bytes FF are allowed
        while pos < bytes.len() && bytes[pos] != 0xFF {
            if st.scans > 0 {
                return Err(E::from(format!(
                    "corrupt JPEG: unexpected bytes at offset {pos} after scan data (expected a marker)"
                )));
            }
            pos += 1;
        }
        while pos + 1 < bytes.len() && bytes[pos + 1] == 0xFF {
            pos += 1;
        }
        if pos + 1 >= bytes.len() {
            return Err(E::from(truncated(&st)));
        }
        let m = bytes[pos + 1];
        pos += 2;
        match m {
            0xD9 => break,
            0xD8 | 0x01 | 0xD0..=0xD7 => continue, // no length
            0x00 => continue,
            _ => {}
        }
        let len = u16_at(bytes, pos).ok_or_else(|| E::from(truncated(&st)))?;
        if len < 2 {
            return Err(E::from(format!("corrupt JPEG: marker segment FF{m:02X} has an invalid length {len}")));
        }
        let end = pos + len;
        if end > bytes.len() {
            return Err(E::from(truncated(&st)));
        }
        let seg = &bytes[pos + 2..end];
        match m {
            0xC0 | 0xC1 | 0xC2 => {
                if st.frame.is_some() {
                    return Err(E::from("corrupt JPEG: more than one frame header (SOF)".to_string()));
                }
                let (info, comps, hmax, vmax) = parse_frame(seg, m == 0xC2).map_err(E::from)?;
                on_frame(&info)?;
                st.has_dc = vec![false; comps.len()];
                st.coded_to = vec![[255u8; 64]; comps.len()];
                if info.progressive {
                    for c in &comps {
                        let n = c.blocks_w * c.blocks_h;
                        let v = crate::error::try_zeroed_vec::<u64>(n, "JPEG coefficient map")
                            .map_err(|e| E::from(format!("cannot check the JPEG: {e}")))?;
                        st.nonzero.push(v);
                    }
                }
                st.frame = Some((info, comps, hmax, vmax));
            }
            0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                return Err(E::from(format!(
                    "unsupported JPEG: {} coding (only baseline, extended and progressive Huffman JPEGs are decoded)",
                    if m >= 0xC9 { "arithmetic" } else if m == 0xC3 { "lossless" } else { "hierarchical" }
                )));
            }
            0xCC => return Err(E::from("unsupported JPEG: arithmetic coding (DAC marker)".to_string())),
            0xC4 => parse_dht(seg, &mut st).map_err(E::from)?,
            0xDB => parse_dqt(seg, &mut st).map_err(E::from)?,
            0xDD => {
                st.restart_interval = u16_at(seg, 0)
                    .ok_or_else(|| E::from("corrupt JPEG: short restart-interval segment".to_string()))?;
            }
            0xDC => return Err(E::from("unsupported JPEG: the height is defined by a DNL marker".to_string())),
            0xDA => {
                let scan = parse_sos(seg, &st).map_err(E::from)?;
                pos = decode_scan(bytes, end, &scan, &mut st).map_err(E::from)?;
                st.scans += 1;
                continue;
            }
            _ => {} // APPn, COM, DQT, ...: skipped
        }
        pos = end;
    }
    let Some((info, comps, _, _)) = st.frame else {
        return Err(E::from("corrupt JPEG: no frame header (SOF) before the end-of-image marker".to_string()));
    };
    if st.scans == 0 {
        return Err(E::from("corrupt JPEG: no image data (end-of-image marker before the first scan)".to_string()));
    }
    if let Some(i) = st.has_dc.iter().position(|&d| !d) {
        return Err(E::from(format!("corrupt JPEG: no scan codes component {} of the image", comps[i].id)));
    }
    if info.progressive {
        for (i, c) in st.coded_to.iter().enumerate() {
            if let Some(k) = c.iter().position(|&a| a != 0) {
                return Err(E::from(format!(
                    "truncated JPEG: progressive scans missing (coefficient {k} of component {} is not coded to full \
                     precision; a file cut at a scan boundary?)",
                    comps[i].id
                )));
            }
        }
    }
    Ok(info)
}

fn truncated(st: &State) -> String {
    if st.scans > 0 {
        "truncated JPEG: the file ends before its end-of-image marker".into()
    } else {
        "truncated JPEG: the file ends before its image data".into()
    }
}

fn parse_frame(seg: &[u8], progressive: bool) -> Result<(FrameInfo, Vec<Component>, usize, usize), String> {
    let short = || "corrupt JPEG: short frame header (SOF)".to_string();
    let precision = *seg.first().ok_or_else(short)?;
    if precision != 8 {
        return Err(format!("unsupported JPEG: {precision}-bit samples (only 8-bit JPEGs are decoded)"));
    }
    let height = u16_at(seg, 1).ok_or_else(short)?;
    let width = u16_at(seg, 3).ok_or_else(short)?;
    let n = *seg.get(5).ok_or_else(short)? as usize;
    if width == 0 || height == 0 {
        return Err(format!("corrupt JPEG: the frame header gives no pixels ({width}x{height})"));
    }
    if n == 0 || n > 4 || seg.len() < 6 + 3 * n {
        return Err(format!("corrupt JPEG: frame header with {n} components"));
    }
    let mut comps = Vec::with_capacity(n);
    for i in 0..n {
        let c = &seg[6 + 3 * i..9 + 3 * i];
        let (h, v) = ((c[1] >> 4) as usize, (c[1] & 15) as usize);
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) || c[2] > 3 {
            return Err(format!("corrupt JPEG: component {} has sampling {h}x{v} or table {}", c[0], c[2]));
        }
        comps.push(Component { id: c[0], h, v, tq: c[2] as usize, blocks_w: 0, blocks_h: 0 });
    }
    let hmax = comps.iter().map(|c| c.h).max().unwrap_or(1);
    let vmax = comps.iter().map(|c| c.v).max().unwrap_or(1);
    for c in &mut comps {
        let cw = (width * c.h).div_ceil(hmax);
        let ch = (height * c.v).div_ceil(vmax);
        c.blocks_w = cw.div_ceil(8);
        c.blocks_h = ch.div_ceil(8);
    }
    Ok((FrameInfo { width, height, components: n, progressive }, comps, hmax, vmax))
}

fn parse_dht(seg: &[u8], st: &mut State) -> Result<(), String> {
    let mut i = 0;
    while i < seg.len() {
        let tc = seg[i] >> 4;
        let th = (seg[i] & 15) as usize;
        if tc > 1 || th > 3 {
            return Err(format!("corrupt JPEG: Huffman table class {tc} id {th}"));
        }
        let counts: [u8; 16] = seg
            .get(i + 1..i + 17)
            .and_then(|c| c.try_into().ok())
            .ok_or_else(|| "corrupt JPEG: short Huffman table segment".to_string())?;
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        let symbols = seg
            .get(i + 17..i + 17 + total)
            .ok_or_else(|| "corrupt JPEG: short Huffman table segment".to_string())?;
        if total > 256 {
            return Err("corrupt JPEG: Huffman table with more than 256 codes".into());
        }
        let t = Huffman::new(&counts, symbols)?;
        if tc == 0 {
            st.dc[th] = Some(t);
        } else {
            st.ac[th] = Some(t);
        }
        i += 17 + total;
    }
    Ok(())
}

fn parse_dqt(seg: &[u8], st: &mut State) -> Result<(), String> {
    let mut i = 0;
    while i < seg.len() {
        let (pq, tq) = ((seg[i] >> 4) as usize, (seg[i] & 15) as usize);
        if pq > 1 || tq > 3 {
            return Err(format!("corrupt JPEG: quantisation table precision {pq} id {tq}"));
        }
        let n = 64 * (pq + 1);
        let v = seg.get(i + 1..i + 1 + n).ok_or_else(|| "corrupt JPEG: short quantisation table segment".to_string())?;
        let mut t = [0u16; 64];
        for (k, q) in t.iter_mut().enumerate() {
            *q = if pq == 0 { v[k] as u16 } else { ((v[2 * k] as u16) << 8) | v[2 * k + 1] as u16 };
        }
        st.quant[tq] = Some(t);
        i += 1 + n;
    }
    Ok(())
}

fn parse_sos(seg: &[u8], st: &State) -> Result<Scan, String> {
    let Some((info, comps, _, _)) = &st.frame else {
        return Err("corrupt JPEG: scan (SOS) before the frame header".into());
    };
    let short = || "corrupt JPEG: short scan header (SOS)".to_string();
    let ns = *seg.first().ok_or_else(short)? as usize;
    if ns == 0 || ns > 4 || seg.len() < 1 + 2 * ns + 3 {
        return Err(format!("corrupt JPEG: scan header with {ns} components"));
    }
    let mut sc = Vec::with_capacity(ns);
    for j in 0..ns {
        let id = seg[1 + 2 * j];
        let t = seg[2 + 2 * j];
        let ci = comps
            .iter()
            .position(|c| c.id == id)
            .ok_or_else(|| format!("corrupt JPEG: the scan names component {id}, which the frame does not have"))?;
        sc.push((ci, (t >> 4) as usize, (t & 15) as usize));
    }
    let ss = seg[1 + 2 * ns] as usize;
    let se = seg[2 + 2 * ns] as usize;
    let ah = seg[3 + 2 * ns] >> 4;
    let al = seg[3 + 2 * ns] & 15;
    if al > 13 {
        return Err(format!("corrupt JPEG: successive approximation shift {al}"));
    }
    if info.progressive {
        let bad = if ss == 0 { se != 0 } else { se < ss || se > 63 || ns != 1 };
        if bad {
            return Err(format!("corrupt JPEG: invalid progressive scan (spectral selection {ss}..{se}, {ns} components)"));
        }
    }
    if sc.iter().any(|&(_, td, ta)| td > 3 || ta > 3) {
        return Err("corrupt JPEG: the scan names a Huffman table id above 3".into());
    }
    let blocks_per_mcu: usize = sc.iter().map(|&(ci, _, _)| comps[ci].h * comps[ci].v).sum();
    if ns > 1 && blocks_per_mcu > 10 {
        return Err(format!("corrupt JPEG: {blocks_per_mcu} blocks per MCU (at most 10)"));
    }
    Ok(Scan { comps: sc, ss, se, ah, al })
}

/// Huffman-decode one scan starting at `start` (just after its header);
/// returns the position of the marker that ends it.
fn decode_scan(bytes: &[u8], start: usize, scan: &Scan, st: &mut State) -> Result<usize, String> {
    let (info, comps, hmax, vmax) = st.frame.as_ref().expect("checked by parse_sos");
    let (info, hmax, vmax) = (*info, *hmax, *vmax);
    let progressive = info.progressive;
    let dc_scan = !progressive || scan.ss == 0;
    let ac_scan = !progressive || scan.ss > 0;
    let refine = progressive && scan.ah > 0;
    // tables needed by this scan must be defined
    for &(ci, td, ta) in &scan.comps {
        if dc_scan && !(progressive && refine) && st.dc[td].is_none() {
            return Err(format!("corrupt JPEG: the scan uses DC Huffman table {td}, which is not defined"));
        }
        if ac_scan && st.ac[ta].is_none() {
            return Err(format!("corrupt JPEG: the scan uses AC Huffman table {ta}, which is not defined"));
        }
        if dc_scan {
            st.has_dc[ci] = true;
        }
        if progressive {
            for a in &mut st.coded_to[ci][scan.ss..=scan.se] {
                *a = (*a).min(scan.al);
            }
        }
    }
    // the MCU layout: one block per MCU for a one-component scan (its own
    // grid), else h x v blocks of each component per MCU
    let (mcus, one) = if scan.comps.len() == 1 {
        let c = &comps[scan.comps[0].0];
        (c.blocks_w * c.blocks_h, true)
    } else {
        (info.width.div_ceil(8 * hmax) * info.height.div_ceil(8 * vmax), false)
    };
    let comps: Vec<Component> = comps.clone();
    let dc_tables: Vec<Option<&Huffman>> = scan.comps.iter().map(|&(_, td, _)| st.dc[td].as_ref()).collect();
    let ac_tables: Vec<Option<&Huffman>> = scan.comps.iter().map(|&(_, _, ta)| st.ac[ta].as_ref()).collect();
    let limits: Vec<[u64; 64]> = scan.comps.iter().map(|&(ci, _, _)| coef_limits(st.quant[comps[ci].tq].as_ref())).collect();
    let mut pred = vec![0i64; scan.comps.len()];
    let al = scan.al as u32;
    let ri = st.restart_interval;
    let mut r = BitReader::new(bytes, start);
    let mut eobrun: u32 = 0;
    let mut next_rst = 0u8;
    for mcu in 0..mcus {
        if ri > 0 && mcu > 0 && mcu % ri == 0 {
            r.finish_segment("a restart interval")?;
            if !r.at_marker {
                return Err(premature(false));
            }
            let m = bytes[r.pos + 1];
            if m != 0xD0 + next_rst {
                return Err(format!(
                    "corrupt JPEG: expected restart marker RST{next_rst} after MCU {mcu}, found FF{m:02X}"
                ));
            }
            next_rst = (next_rst + 1) & 7;
            r = BitReader::new(bytes, r.pos + 2);
            eobrun = 0;
            pred.iter_mut().for_each(|p| *p = 0);
        }
        for (j, &(ci, _, _)) in scan.comps.iter().enumerate() {
            let c = &comps[ci];
            let n_blocks = if one { 1 } else { c.h * c.v };
            let q = &limits[j];
            for _ in 0..n_blocks {
                if !progressive {
                    let (dc, ac) = (dc_tables[j].expect("checked"), ac_tables[j].expect("checked"));
                    sequential_block(&mut r, dc, ac, q, &mut pred[j]);
                } else if scan.ss == 0 {
                    if refine {
                        r.bits(1);
                    } else {
                        let s = r.decode(dc_tables[j].expect("checked"));
                        check_dc(&mut r, s);
                        pred[j] += extend(r.bits(s as u32), s);
                        check_coef(&mut r, pred[j] << al, q, 0);
                    }
                } else {
                    // AC scans have one component: the block index is the MCU's
                    let nz = &mut st.nonzero[ci][mcu];
                    let t = ac_tables[j].expect("checked");
                    if refine {
                        ac_refine(&mut r, t, scan.ss, scan.se, &mut eobrun, nz);
                    } else {
                        ac_first(&mut r, t, scan.ss, scan.se, al, q, &mut eobrun, nz);
                    }
                }
                r.end_block()?;
            }
        }
    }
    r.finish_segment("the scan")?;
    Ok(r.pos)
}

/// T.81 F.2.2.1 `EXTEND`: the signed value of `s` magnitude bits `v`.
#[inline]
fn extend(v: u32, s: u8) -> i64 {
    if s == 0 {
        0
    } else if v < (1 << (s - 1)) {
        v as i64 - (1i64 << s) + 1
    } else {
        v as i64
    }
}

/// The largest quantised magnitude at each zig-zag index for the
/// quantisation table `q` (no limit without a table).
///
/// The forward DCT of 8-bit samples (level-shifted to -128..127) has no
/// coefficient above 1024 in magnitude (DC: 8 x the mean; AC: at most 1024,
/// at u = v = 4), so a quantised coefficient at index `k` has
/// |v| q_k <= 1024 + q_k (rounding; trellis quantisers move a coefficient by
/// at most one step); 64 is added for encoders' integer DCTs. Damaged scan
/// data that the Huffman code happens to accept usually sends the DC
/// predictor or some AC value far outside that range.
fn coef_limits(q: Option<&[u16; 64]>) -> [u64; 64] {
    let mut lim = [u64::MAX; 64];
    if let Some(q) = q {
        for (l, &qk) in lim.iter_mut().zip(q) {
            let qk = qk.max(1) as u64;
            *l = (1024 + qk + 64) / qk;
        }
    }
    lim
}

#[inline(always)]
fn check_coef(r: &mut BitReader<'_>, v: i64, lim: &[u64; 64], k: usize) {
    if v.unsigned_abs() > lim[k] {
        r.fail(coef_error(v, k));
    }
}

#[cold]
fn coef_error(v: i64, k: usize) -> String {
    format!(
        "corrupt JPEG: a quantised {} coefficient ({v}) out of the range 8-bit samples can give (damaged scan data)",
        if k == 0 { "DC" } else { "AC" }
    )
}

#[inline(always)]
fn check_dc(r: &mut BitReader<'_>, s: u8) {
    if s > 11 {
        r.fail(format!("corrupt JPEG: DC magnitude category {s} (at most 11 for 8-bit samples)"));
    }
}

#[inline(always)]
fn sequential_block(r: &mut BitReader<'_>, dc: &Huffman, ac: &Huffman, q: &[u64; 64], pred: &mut i64) {
    let s = r.decode(dc);
    check_dc(r, s);
    *pred += extend(r.bits(s as u32), s);
    check_coef(r, *pred, q, 0);
    let mut k = 1;
    while k < 64 {
        let rs = r.decode(ac);
        let (run, s) = ((rs >> 4) as usize, rs & 15);
        if s == 0 {
            if run != 15 {
                break; // end of block
            }
            k += 16;
            continue;
        }
        k += run;
        if k > 63 || s > 10 {
            r.fail("corrupt JPEG: a coefficient index past 63 or an AC category above 10 in the scan data".into());
            return;
        }
        let v = extend(r.bits(s as u32), s);
        check_coef(r, v, q, k);
        k += 1;
    }
}

#[allow(clippy::too_many_arguments)]
fn ac_first(
    r: &mut BitReader<'_>,
    t: &Huffman,
    ss: usize,
    se: usize,
    al: u32,
    q: &[u64; 64],
    eobrun: &mut u32,
    nz: &mut u64,
) {
    if *eobrun > 0 {
        *eobrun -= 1;
        return;
    }
    let mut k = ss;
    while k <= se {
        let rs = r.decode(t);
        let (run, s) = ((rs >> 4) as u32, rs & 15);
        if s == 0 {
            if run < 15 {
                *eobrun = (1 << run) - 1 + r.bits(run);
                break;
            }
            k += 16;
            continue;
        }
        k += run as usize;
        if k > se || s > 10 {
            r.fail("corrupt JPEG: a coefficient past the scan's spectral band in the scan data".into());
            return;
        }
        let v = extend(r.bits(s as u32), s) << al;
        check_coef(r, v, q, k);
        *nz |= 1 << k;
        k += 1;
    }
}

/// libjpeg's `decode_mcu_AC_refine` (jdphuff.c), without the coefficient values.
fn ac_refine(r: &mut BitReader<'_>, t: &Huffman, ss: usize, se: usize, eobrun: &mut u32, nz: &mut u64) {
    let mut k = ss;
    if *eobrun == 0 {
        while k <= se {
            let rs = r.decode(t);
            let (mut run, s) = ((rs >> 4) as i32, rs & 15);
            if s != 0 {
                if s != 1 {
                    r.fail("corrupt JPEG: a refinement coefficient of magnitude above 1 in the scan data".into());
                    return;
                }
                r.bits(1);
            } else if run != 15 {
                *eobrun = 1 << run;
                if run > 0 {
                    *eobrun += r.bits(run as u32);
                }
                break;
            }
            while k <= se {
                if *nz & (1 << k) != 0 {
                    r.bits(1);
                } else {
                    if run == 0 {
                        break;
                    }
                    run -= 1;
                }
                k += 1;
            }
            if s != 0 {
                if k > se {
                    r.fail("corrupt JPEG: a refinement coefficient past the scan's spectral band".into());
                    return;
                }
                *nz |= 1 << k;
            }
            k += 1;
        }
    }
    if *eobrun > 0 {
        while k <= se {
            if *nz & (1 << k) != 0 {
                r.bits(1);
            }
            k += 1;
        }
        *eobrun -= 1;
    }
}
