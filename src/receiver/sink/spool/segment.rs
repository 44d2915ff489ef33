//! Spool segment files: append-only sequences of framed records.
//!
//! A frame is `len: u32 LE | sum: 8 bytes | payload`, where `sum` is the first 8 bytes of the
//! payload's SHA-256. A record cut short by a crash (a torn tail) or damaged on disk fails the
//! length or checksum test and is reported as [`Read::Corrupt`]; nothing after it in the same
//! segment is trusted, because frame boundaries are lost. Blocking I/O: call from a blocking task.

use std::fs::File;
use std::io::{self, BufReader, IoSlice, Read as _, Seek, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Bytes before the payload in a frame.
pub const HEADER_LEN: u64 = 12;
/// Largest payload accepted, to bound what a corrupt length field can make us allocate.
pub const MAX_PAYLOAD: u64 = 256 * 1024 * 1024;
const SUFFIX: &str = ".seg";
/// Read buffer: many small records per read call; larger payloads bypass it.
const READ_BUFFER: usize = 256 * 1024;

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

/// Appends the frame of `payload` to `file` (opened for appending), in one system call unless
/// the kernel takes less. The payload is not copied into a frame first: at about 1 MiB per ENS
/// batch of 1000 events, that copy was one more large allocation per append on whichever
/// blocking thread ran it. Returns the frame's length.
pub fn append(mut file: &File, payload: &[u8]) -> io::Result<u64> {
    let header = header(payload);
    let mut parts = [IoSlice::new(&header), IoSlice::new(payload)];
    let mut rest = &mut parts[..];
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(HEADER_LEN + payload.len() as u64)
}

/// The bytes before `payload` in its frame.
fn header(payload: &[u8]) -> [u8; HEADER_LEN as usize] {
    let mut header = [0u8; HEADER_LEN as usize];
    header[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[4..].copy_from_slice(&checksum(payload));
    header
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
    /// Nothing more below the limit.
    End,
    /// A short or damaged frame at this offset.
    Corrupt,
}

/// Reads consecutive frames of one segment through a buffer (one open and one seek for many
/// records), never past a limit: the bytes known to be durable.
pub struct Reader {
    file: BufReader<File>,
    at: u64,
    limit: u64,
}

impl Reader {
    /// Opens the segment at `path` for reading frames from `at`, up to `limit` bytes into it.
    pub fn open(path: &Path, at: u64, limit: u64) -> io::Result<Self> {
        let mut file = BufReader::with_capacity(READ_BUFFER, File::open(path)?);
        file.seek(SeekFrom::Start(at))?;
        Ok(Self { file, at, limit })
    }

    /// Reads the next frame. After [`Read::Corrupt`] nothing further can be trusted.
    pub fn next(&mut self) -> io::Result<Read> {
        let (pos, limit) = (self.at, self.limit);
        if pos >= limit {
            return Ok(Read::End);
        }
        if limit - pos < HEADER_LEN {
            return Ok(Read::Corrupt);
        }
        let mut header = [0u8; HEADER_LEN as usize];
        self.file.read_exact(&mut header)?;
        let len = u64::from(u32::from_le_bytes([
            header[0], header[1], header[2], header[3],
        ]));
        if len == 0 || len > MAX_PAYLOAD || limit - pos - HEADER_LEN < len {
            return Ok(Read::Corrupt);
        }
        let mut payload = vec![0u8; len as usize];
        self.file.read_exact(&mut payload)?;
        if checksum(&payload)[..] != header[4..] {
            return Ok(Read::Corrupt);
        }
        self.at = pos + HEADER_LEN + len;
        Ok(Read::Record {
            payload,
            next: self.at,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// The frame [`append`] writes, in memory.
    fn encode(payload: &[u8]) -> Vec<u8> {
        [&header(payload)[..], payload].concat()
    }

    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ens-seg-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        let mut f = File::create(&p).unwrap();
        f.write_all(bytes).unwrap();
        p
    }

    fn read(p: &Path, at: u64, limit: u64) -> Read {
        Reader::open(p, at, limit).unwrap().next().unwrap()
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_name(&file_name(42)), Some(42));
        assert_eq!(parse_name("offset"), None);
    }

    #[test]
    fn reads_records_then_end() {
        let mut bytes = encode(b"one");
        let first = bytes.len() as u64;
        bytes.extend(encode(b"two"));
        let limit = bytes.len() as u64;
        let p = temp_file("ok", &bytes);
        let mut r = Reader::open(&p, 0, limit).unwrap();
        assert_eq!(
            r.next().unwrap(),
            Read::Record {
                payload: b"one".to_vec(),
                next: first
            }
        );
        assert_eq!(
            r.next().unwrap(),
            Read::Record {
                payload: b"two".to_vec(),
                next: limit
            }
        );
        assert_eq!(r.next().unwrap(), Read::End);
        // From the middle, and never past the limit (bytes not yet durable).
        assert!(
            matches!(read(&p, first, limit), Read::Record { payload, .. } if payload == b"two")
        );
        let mut r = Reader::open(&p, 0, first).unwrap();
        assert!(matches!(r.next().unwrap(), Read::Record { .. }));
        assert_eq!(r.next().unwrap(), Read::End);
    }

    #[test]
    fn torn_and_damaged_frames_are_corrupt() {
        let mut bytes = encode(b"whole");
        let good = bytes.len() as u64;
        let torn = encode(b"cut short by a crash");
        bytes.extend_from_slice(&torn[..torn.len() - 3]);
        let p = temp_file("torn", &bytes);
        let mut r = Reader::open(&p, 0, bytes.len() as u64).unwrap();
        assert!(matches!(r.next().unwrap(), Read::Record { .. }));
        assert_eq!(r.next().unwrap(), Read::Corrupt);
        assert_eq!(read(&p, good, good + 5), Read::Corrupt);

        let mut flipped = encode(b"bit rot");
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let p = temp_file("flip", &flipped);
        assert_eq!(read(&p, 0, flipped.len() as u64), Read::Corrupt);

        let zeros = [0u8; 32];
        let p = temp_file("zeros", &zeros);
        assert_eq!(read(&p, 0, 32), Read::Corrupt);
    }
}
