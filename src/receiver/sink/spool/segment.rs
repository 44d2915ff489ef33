//! Spool segment files: append-only sequences of framed records.
//!
//! A frame is `len: u32 LE | sum: 8 bytes | payload`, where `sum` is the first 8 bytes of the
//! payload's SHA-256. A record cut short by a crash (a torn tail) or damaged on disk fails the
//! length or checksum test and is reported as [`Read::Corrupt`]; nothing after it in the same
//! segment is trusted, because frame boundaries are lost. Blocking I/O: call from a blocking task.

use std::fs::File;
use std::io::{self, Read as _, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Bytes before the payload in a frame.
pub const HEADER_LEN: u64 = 12;
/// Largest payload accepted, to bound what a corrupt length field can make us allocate.
pub const MAX_PAYLOAD: u64 = 256 * 1024 * 1024;
const SUFFIX: &str = ".seg";

/// The file name of segment `seq`.
pub fn file_name(seq: u64) -> String {
    format!("{seq:020}{SUFFIX}")
}

/// The path of segment `seq` in `dir`.
pub fn path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(file_name(seq))
}

/// The sequence number of a segment file name, `None` for other files.
pub fn parse_name(name: &str) -> Option<u64> {
    name.strip_suffix(SUFFIX)?.parse().ok()
}

/// Frames `payload`.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + HEADER_LEN as usize);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&checksum(payload));
    out.extend_from_slice(payload);
    out
}

fn checksum(payload: &[u8]) -> [u8; 8] {
    let digest = Sha256::digest(payload);
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&digest[..8]);
    sum
}

/// The outcome of reading one frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// A whole, valid record; the next one starts at `next`.
    Record {
        /// The record's payload.
        payload: Vec<u8>,
        /// Offset just after this frame.
        next: u64,
    },
    /// Nothing more below `limit`.
    End,
    /// A short or damaged frame at this offset.
    Corrupt,
}

/// Reads the frame at `pos` in `file`, looking no further than `limit` bytes into the file.
pub fn read_at(file: &mut File, pos: u64, limit: u64) -> io::Result<Read> {
    if pos >= limit {
        return Ok(Read::End);
    }
    if limit - pos < HEADER_LEN {
        return Ok(Read::Corrupt);
    }
    file.seek(SeekFrom::Start(pos))?;
    let mut header = [0u8; HEADER_LEN as usize];
    file.read_exact(&mut header)?;
    let len = u64::from(u32::from_le_bytes([
        header[0], header[1], header[2], header[3],
    ]));
    if len == 0 || len > MAX_PAYLOAD || limit - pos - HEADER_LEN < len {
        return Ok(Read::Corrupt);
    }
    let mut payload = vec![0u8; len as usize];
    file.read_exact(&mut payload)?;
    if checksum(&payload)[..] != header[4..] {
        return Ok(Read::Corrupt);
    }
    Ok(Read::Record {
        payload,
        next: pos + HEADER_LEN + len,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn temp_file(name: &str, bytes: &[u8]) -> (PathBuf, File) {
        let dir = std::env::temp_dir().join(format!("ens-seg-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        let mut f = File::create(&p).unwrap();
        f.write_all(bytes).unwrap();
        (p.clone(), File::open(p).unwrap())
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_name(&file_name(42)), Some(42));
        assert_eq!(parse_name("offset"), None);
    }

    #[test]
    fn reads_records_then_end() {
        let mut bytes = encode(b"one");
        bytes.extend(encode(b"two"));
        let limit = bytes.len() as u64;
        let (_, mut f) = temp_file("ok", &bytes);
        let Read::Record { payload, next } = read_at(&mut f, 0, limit).unwrap() else {
            panic!("first record")
        };
        assert_eq!(payload, b"one");
        assert_eq!(
            read_at(&mut f, next, limit).unwrap(),
            Read::Record {
                payload: b"two".to_vec(),
                next: limit
            }
        );
        assert_eq!(read_at(&mut f, limit, limit).unwrap(), Read::End);
    }

    #[test]
    fn torn_and_damaged_frames_are_corrupt() {
        let mut bytes = encode(b"whole");
        let good = bytes.len() as u64;
        let torn = encode(b"cut short by a crash");
        bytes.extend_from_slice(&torn[..torn.len() - 3]);
        let (_, mut f) = temp_file("torn", &bytes);
        assert!(matches!(
            read_at(&mut f, 0, bytes.len() as u64).unwrap(),
            Read::Record { .. }
        ));
        assert_eq!(
            read_at(&mut f, good, bytes.len() as u64).unwrap(),
            Read::Corrupt
        );
        assert_eq!(read_at(&mut f, good, good + 5).unwrap(), Read::Corrupt);

        let mut flipped = encode(b"bit rot");
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let (_, mut f) = temp_file("flip", &flipped);
        assert_eq!(
            read_at(&mut f, 0, flipped.len() as u64).unwrap(),
            Read::Corrupt
        );

        let zeros = [0u8; 32];
        let (_, mut f) = temp_file("zeros", &zeros);
        assert_eq!(read_at(&mut f, 0, 32).unwrap(), Read::Corrupt);
    }
}
