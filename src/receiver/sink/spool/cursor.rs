//! The spool's cursor: the position of the first record not yet delivered, in the file `offset`.
//!
//! The file has two slots, [`SLOT`] bytes apart (never in the same disk sector), each
//! `generation | seq | at | checksum`. A write overwrites the older slot in place: 32 bytes into
//! the page cache, which a killed process cannot lose; [`Cursor::commit`] also syncs it, and a
//! sync of the file ([`Cursor::file`]) makes every earlier write durable. A power loss can tear
//! only slots being written back: a torn slot fails its checksum and the other one, an earlier
//! position, wins, so at worst delivered groups are delivered again (at least once); should both
//! be torn, delivery restarts at `start`, the first segment on disk. The file is created whole
//! (write, fsync, rename, fsync dir) and never changes size afterwards, so `fdatasync` has no
//! metadata to flush. A legacy text file (`<seq> <byte>`, older receivers, which replaced it by
//! rename after each record) is read and rewritten in this form on open.
//! Blocking I/O: call from a blocking task.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

const FILE: &str = "offset";
const TMP: &str = "offset.tmp";
/// Distance between the two slots, and the size of each.
const SLOT: u64 = 4096;
/// `generation`, `seq`, `at` (u64 LE each), then the first 8 bytes of their SHA-256.
const SLOT_LEN: usize = 32;

/// A position in the spool: segment and byte offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    /// The segment's sequence number.
    pub seq: u64,
    /// Byte offset in the segment.
    pub at: u64,
}

/// The committed delivery position of one spool directory.
pub struct Cursor {
    file: Arc<File>,
    path: PathBuf,
    /// Generation of the last commit; the next one goes to slot `(generation + 1) % 2`.
    generation: u64,
    pos: Pos,
}

impl Cursor {
    /// Opens the cursor in `dir`; a new one (no file yet, or both slots torn) starts at `start`.
    pub fn open(dir: &Path, start: Pos) -> io::Result<Self> {
        let path = dir.join(FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let found = match &bytes {
            None => None,
            Some(b) if b.len() as u64 == 2 * SLOT => {
                let newest = newest_slot(b);
                if newest.is_none() {
                    tracing::warn!(
                        path = %path.display(),
                        "both spool offset slots are damaged; delivering the spool from its start"
                    );
                }
                newest
            }
            Some(b) => Some((0, parse_legacy(b)?)),
        };
        let (generation, pos) = found.unwrap_or((0, start));
        if found.is_none() || bytes.is_some_and(|b| b.len() as u64 != 2 * SLOT) {
            create(dir, &path, generation, pos)?;
        }
        let file = Arc::new(OpenOptions::new().write(true).open(&path)?);
        Ok(Self {
            file,
            path,
            generation,
            pos,
        })
    }

    /// The committed position.
    pub fn pos(&self) -> Pos {
        self.pos
    }

    /// Commits so far (tests count them).
    #[cfg(test)]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Where the cursor lives (for error messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `pos` in the older slot: survives the process, and the machine once synced.
    pub fn write(&mut self, pos: Pos) -> io::Result<()> {
        let generation = self.generation + 1;
        self.file
            .write_all_at(&encode_slot(generation, pos), (generation % 2) * SLOT)?;
        self.generation = generation;
        self.pos = pos;
        Ok(())
    }

    /// Records `pos` durably: one slot write, one `fdatasync`.
    pub fn commit(&mut self, pos: Pos) -> io::Result<()> {
        self.write(pos)?;
        self.file.sync_data()
    }

    /// The file, to sync without holding the cursor: a sync makes every earlier write durable.
    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }
}

/// Writes a whole new file holding `pos` in slot `generation % 2` and swaps it in atomically.
fn create(dir: &Path, path: &Path, generation: u64, pos: Pos) -> io::Result<()> {
    let mut image = vec![0u8; 2 * SLOT as usize];
    let at = ((generation % 2) * SLOT) as usize;
    image[at..at + SLOT_LEN].copy_from_slice(&encode_slot(generation, pos));
    let tmp = dir.join(TMP);
    let mut f = File::create(&tmp)?;
    f.write_all(&image)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

fn encode_slot(generation: u64, pos: Pos) -> [u8; SLOT_LEN] {
    let mut out = [0u8; SLOT_LEN];
    out[..8].copy_from_slice(&generation.to_le_bytes());
    out[8..16].copy_from_slice(&pos.seq.to_le_bytes());
    out[16..24].copy_from_slice(&pos.at.to_le_bytes());
    let digest = Sha256::digest(&out[..24]);
    out[24..].copy_from_slice(&digest[..8]);
    out
}

fn decode_slot(slot: &[u8]) -> Option<(u64, Pos)> {
    let word = |i: usize| u64::from_le_bytes(slot[i..i + 8].try_into().unwrap_or([0; 8]));
    let digest = Sha256::digest(&slot[..24]);
    (digest[..8] == slot[24..SLOT_LEN]).then(|| {
        (
            word(0),
            Pos {
                seq: word(8),
                at: word(16),
            },
        )
    })
}

/// The valid slot with the highest generation.
fn newest_slot(file: &[u8]) -> Option<(u64, Pos)> {
    [0, SLOT as usize]
        .into_iter()
        .filter_map(|at| decode_slot(&file[at..at + SLOT_LEN]))
        .max_by_key(|(generation, _)| *generation)
}

fn parse_legacy(bytes: &[u8]) -> io::Result<Pos> {
    let text = std::str::from_utf8(bytes).unwrap_or("");
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(seq)), Some(Ok(at))) => Ok(Pos { seq, at }),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "offset file is neither two slots nor `<segment> <byte>`",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("ens-cursor-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        p
    }

    const fn pos(seq: u64, at: u64) -> Pos {
        Pos { seq, at }
    }

    #[test]
    fn commits_survive_reopen() {
        let dir = temp("reopen");
        let mut c = Cursor::open(&dir, pos(3, 0)).unwrap();
        assert_eq!(c.pos(), pos(3, 0));
        for at in [10, 20, 30] {
            c.commit(pos(3, at)).unwrap();
        }
        drop(c);
        let mut c = Cursor::open(&dir, pos(0, 0)).unwrap();
        assert_eq!(c.pos(), pos(3, 30));
        c.commit(pos(4, 0)).unwrap();
        assert_eq!(Cursor::open(&dir, pos(0, 0)).unwrap().pos(), pos(4, 0));
        assert_eq!(
            fs::metadata(dir.join(FILE)).unwrap().len(),
            2 * SLOT,
            "commits overwrite in place: the size never changes"
        );
    }

    #[test]
    fn a_torn_commit_falls_back_to_the_previous_one() {
        let dir = temp("torn");
        let mut c = Cursor::open(&dir, pos(0, 0)).unwrap();
        c.commit(pos(1, 100)).unwrap();
        c.commit(pos(1, 200)).unwrap();
        let newest = (c.generation % 2) * SLOT;
        drop(c);
        // A crash halfway through writing the newest slot.
        let f = OpenOptions::new().write(true).open(dir.join(FILE)).unwrap();
        f.write_all_at(&[0xAB; 12], newest + 20).unwrap();
        drop(f);
        let mut c = Cursor::open(&dir, pos(0, 0)).unwrap();
        assert_eq!(c.pos(), pos(1, 100), "the previous commit wins");
        // The damaged slot is the older one now and is overwritten next.
        c.commit(pos(1, 300)).unwrap();
        assert_eq!(Cursor::open(&dir, pos(0, 0)).unwrap().pos(), pos(1, 300));
    }

    #[test]
    fn both_slots_damaged_restart_at_the_given_start() {
        let dir = temp("damaged");
        let mut c = Cursor::open(&dir, pos(0, 0)).unwrap();
        c.commit(pos(5, 100)).unwrap();
        drop(c);
        fs::write(dir.join(FILE), vec![0xFFu8; 2 * SLOT as usize]).unwrap();
        let mut c = Cursor::open(&dir, pos(4, 0)).unwrap();
        assert_eq!(c.pos(), pos(4, 0), "delivered again rather than lost");
        c.commit(pos(4, 10)).unwrap();
        assert_eq!(Cursor::open(&dir, pos(0, 0)).unwrap().pos(), pos(4, 10));
    }

    #[test]
    fn writes_are_read_back_before_any_sync() {
        let dir = temp("write");
        let mut c = Cursor::open(&dir, pos(0, 0)).unwrap();
        c.write(pos(2, 30)).unwrap();
        c.write(pos(2, 60)).unwrap();
        drop(c);
        // A killed process loses nothing the kernel has: the last write wins.
        assert_eq!(Cursor::open(&dir, pos(0, 0)).unwrap().pos(), pos(2, 60));
    }

    #[test]
    fn a_legacy_text_offset_is_read_and_rewritten() {
        let dir = temp("legacy");
        fs::write(dir.join(FILE), "7 1234\n").unwrap();
        let mut c = Cursor::open(&dir, pos(0, 0)).unwrap();
        assert_eq!(c.pos(), pos(7, 1234));
        assert_eq!(fs::metadata(dir.join(FILE)).unwrap().len(), 2 * SLOT);
        c.commit(pos(7, 2000)).unwrap();
        assert_eq!(Cursor::open(&dir, pos(0, 0)).unwrap().pos(), pos(7, 2000));
        fs::write(dir.join(FILE), "garbage").unwrap();
        assert!(Cursor::open(&dir, pos(0, 0)).is_err());
    }
}
