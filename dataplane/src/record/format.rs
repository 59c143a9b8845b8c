//! The recording file format, version 1 (documented in docs/recording.md).
//!
//! ```text
//! file    := header block* [trailer footer]
//! header  := "PGWREC" version:u16le meta_len:u32le meta:JSON
//! block   := kind:u8 stored_len:u32le raw_len:u32le stored:[u8; stored_len]
//!            kind 'D': stored is one zstd frame (with content checksum) of raw_len bytes of frames
//!            kind 'T': stored is the trailer JSON, uncompressed (stored_len == raw_len)
//! frame   := direction:u8 ('C' client sent, 'S' client received) offset_us:u64le len:u32le bytes
//! footer  := trailer_block_len:u32le "PGWE"
//! ```
//! Every block is appended whole, so a file cut anywhere (a crash) is a readable prefix: a reader
//! stops at the first incomplete block and reports the recording as unfinished.

pub const MAGIC: &[u8; 6] = b"PGWREC";
pub const VERSION: u16 = 1;
pub const BLOCK_DATA: u8 = b'D';
pub const BLOCK_TRAILER: u8 = b'T';
pub const FOOTER_MAGIC: &[u8; 4] = b"PGWE";
/// What the client sent (read from the client socket, before any decision).
pub const FROM_CLIENT: u8 = b'C';
/// What the client received (written to the client socket, after masking and denial rewrites).
pub const TO_CLIENT: u8 = b'S';
/// direction + offset + length.
pub const FRAME_HEADER: usize = 1 + 8 + 4;
/// Uncompressed bytes of frames per data block: the unit of compression and of memory per session.
pub const CHUNK: usize = 64 * 1024;
/// The file name suffix.
pub const EXTENSION: &str = "pgwrec";

pub fn header(meta_json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + meta_json.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&len32(meta_json.len()).to_le_bytes());
    out.extend_from_slice(meta_json);
    out
}

pub fn block_header(kind: u8, stored_len: usize, raw_len: usize) -> [u8; 9] {
    let mut out = [0u8; 9];
    out[0] = kind;
    out[1..5].copy_from_slice(&len32(stored_len).to_le_bytes());
    out[5..9].copy_from_slice(&len32(raw_len).to_le_bytes());
    out
}

/// The trailer block followed by the footer that locates it from the end of the file.
pub fn trailer(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + json.len() + 8);
    out.extend_from_slice(&block_header(BLOCK_TRAILER, json.len(), json.len()));
    out.extend_from_slice(json);
    let block_len = out.len();
    out.extend_from_slice(&len32(block_len).to_le_bytes());
    out.extend_from_slice(FOOTER_MAGIC);
    out
}

pub fn frame_header(direction: u8, offset_us: u64, len: usize) -> [u8; FRAME_HEADER] {
    let mut out = [0u8; FRAME_HEADER];
    out[0] = direction;
    out[1..9].copy_from_slice(&offset_us.to_le_bytes());
    out[9..13].copy_from_slice(&len32(len).to_le_bytes());
    out
}

/// Lengths here are bounded by CHUNK or by metadata the gateway builds; saturate rather than wrap.
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_trailer_layout() {
        let h = header(b"{}");
        assert_eq!(&h[..6], MAGIC);
        assert_eq!(u16::from_le_bytes([h[6], h[7]]), 1);
        assert_eq!(u32::from_le_bytes([h[8], h[9], h[10], h[11]]), 2);
        let t = trailer(b"{\"a\":1}");
        let n = t.len();
        assert_eq!(&t[n - 4..], FOOTER_MAGIC);
        let block_len = u32::from_le_bytes([t[n - 8], t[n - 7], t[n - 6], t[n - 5]]) as usize;
        assert_eq!(block_len, n - 8);
        assert_eq!(t[0], BLOCK_TRAILER);
    }
}
