//! The write-ahead log in front of redb: one contiguous append and one
//! `fdatasync` per group commit, where a durable redb commit writes about
//! thirteen scattered places and syncs twice (BENCHMARKS.md section 9).
//!
//! The log is one file, reused: after every checkpoint (a durable redb
//! commit that holds everything logged so far and names a new generation)
//! writing starts again at offset 0 under that generation. A frame is
//!
//! ```text
//! generation u64 | index u64 | length u32 | crc32 u32 | length bytes (a prost `Frame`)
//! ```
//!
//! little-endian, the CRC over the first twenty bytes and the body. Reading
//! back stops at the first frame that is torn, has a wrong checksum, another
//! generation or an unexpected index: everything after it was never
//! acknowledged (each group is synced before its callers hear of it, and
//! frames are written in order), and frames of an older generation are
//! already in redb. Every open starts a new generation too, so stale frames
//! from an earlier process can never be read as a continuation.

use std::io;
use std::os::unix::fs::FileExt;

use prost::Message;

use super::entry::Frame;

/// Bytes before a frame's body.
const HEADER: usize = 24;

/// Largest frame body read back; anything claiming more is torn (a group
/// commit holds at most `MAX_BATCH` appends of bounded size).
const MAX_FRAME: u32 = 1 << 30;

/// The file under the log: the real one, or a simulated disk in tests.
pub(crate) trait LogFile: Send {
    /// The whole file.
    fn read_all(&mut self) -> io::Result<Vec<u8>>;
    /// Writes `data` at `offset` (not yet durable).
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes what was written durable.
    fn sync(&mut self) -> io::Result<()>;
}

/// The log as a file on disk.
pub(crate) struct FileLog(pub(crate) std::fs::File);

impl LogFile for FileLog {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        let len = self.0.metadata()?.len();
        let mut bytes = vec![0; usize::try_from(len).map_err(io::Error::other)?];
        self.0.read_exact_at(&mut bytes, 0)?;
        Ok(bytes)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write_all_at(data, offset)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
}

/// The log's writing position.
pub(crate) struct Wal {
    file: Box<dyn LogFile>,
    generation: u64,
    offset: u64,
    index: u64,
    buffer: Vec<u8>,
}

impl Wal {
    /// A log that writes `generation` from the start of `file`.
    pub(crate) fn new(file: Box<dyn LogFile>, generation: u64) -> Self {
        Self {
            file,
            generation,
            offset: 0,
            index: 0,
            buffer: Vec::new(),
        }
    }

    /// Bytes written since the last rewind.
    pub(crate) fn len(&self) -> u64 {
        self.offset
    }

    /// Appends one frame and syncs it. On error the position does not move:
    /// the next frame overwrites whatever part of this one was written.
    pub(crate) fn append(&mut self, frame: &Frame) -> io::Result<()> {
        let body = frame.encoded_len();
        let length = u32::try_from(body)
            .ok()
            .filter(|l| *l <= MAX_FRAME)
            .ok_or_else(|| io::Error::other("a group commit too large for one log frame"))?;
        self.buffer.clear();
        self.buffer.reserve(HEADER + body);
        self.buffer
            .extend_from_slice(&self.generation.to_le_bytes());
        self.buffer.extend_from_slice(&self.index.to_le_bytes());
        self.buffer.extend_from_slice(&length.to_le_bytes());
        self.buffer.extend_from_slice(&[0; 4]);
        frame.encode(&mut self.buffer).map_err(io::Error::other)?;
        let crc = checksum(&self.buffer[..20], &self.buffer[HEADER..]);
        self.buffer[20..HEADER].copy_from_slice(&crc.to_le_bytes());
        self.file.write_at(self.offset, &self.buffer)?;
        self.file.sync()?;
        self.offset += self.buffer.len() as u64;
        self.index += 1;
        // A rare huge group must not pin its buffer for good.
        if self.buffer.capacity() > 4 << 20 {
            self.buffer = Vec::new();
        }
        Ok(())
    }

    /// Starts `generation` at the start of the file (after a checkpoint
    /// that holds everything written so far).
    pub(crate) fn rewind(&mut self, generation: u64) {
        self.generation = generation;
        self.offset = 0;
        self.index = 0;
    }
}

fn checksum(header: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header);
    hasher.update(body);
    hasher.finalize()
}

/// The valid frames of `generation` at the start of `bytes`. A frame whose
/// checksum holds but whose body does not decode is an error, not a torn
/// end: it was written whole, by a format this build does not read.
pub(crate) fn scan(bytes: &[u8], generation: u64) -> io::Result<Vec<Frame>> {
    let mut frames = Vec::new();
    let mut at = 0usize;
    let mut index = 0u64;
    while let Some(header) = bytes.get(at..at + HEADER) {
        let field = |range: std::ops::Range<usize>| {
            let mut word = [0u8; 8];
            word[..range.len()].copy_from_slice(&header[range]);
            u64::from_le_bytes(word)
        };
        let (frame_generation, frame_index) = (field(0..8), field(8..16));
        let (length, crc) = (field(16..20), field(20..24));
        if frame_generation != generation || frame_index != index || length > MAX_FRAME as u64 {
            break;
        }
        let start = at + HEADER;
        let Some(body) = bytes.get(start..start + length as usize) else {
            break;
        };
        if u64::from(checksum(&header[..20], body)) != crc {
            break;
        }
        let frame = Frame::decode(body).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("log frame {index} of generation {generation} is unreadable: {e}"),
            )
        })?;
        frames.push(frame);
        at = start + length as usize;
        index += 1;
    }
    Ok(frames)
}
