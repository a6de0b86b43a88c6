//! Length-prefixed JSON framing: a 4-byte big-endian length, then the JSON.
//!
//! Hand-written because it is twenty lines; a codec crate would bring an
//! async runtime to both sides for no gain.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest frame either side accepts. A create request carries a whole
/// OCI spec; 16 MiB is far above any real one and bounds what a hostile peer
/// can make us allocate.
pub const MAX_FRAME_LEN: u32 = 16 << 20;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed or closed in the middle of a frame.
    #[error("connection error")]
    Io(#[from] io::Error),
    /// The peer closed the connection cleanly between frames.
    #[error("connection closed by peer")]
    Closed,
    /// The length prefix is larger than [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN} bytes")]
    TooLarge(u32),
    /// The frame is not the JSON we expect. serde's message quotes what
    /// the peer sent (an unknown variant's name, verbatim), so it prints
    /// escaped ([`crate::sanitize`]) and is not a `source` that a caller
    /// would print raw.
    #[error("malformed frame: {}", crate::sanitize(&.0.to_string()))]
    Json(serde_json::Error),
}

impl From<serde_json::Error> for FrameError {
    fn from(e: serde_json::Error) -> Self {
        FrameError::Json(e)
    }
}

/// Writes `msg` as one frame.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    let body = serde_json::to_vec(msg)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|l| *l <= MAX_FRAME_LEN)
        .ok_or(FrameError::TooLarge(u32::MAX))?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame's raw JSON bytes.
pub fn read_frame_bytes<R: Read>(r: &mut R) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    // Distinguish a clean close (no byte of a new frame) from a torn frame.
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    Ok(body)
}

/// Reads one frame and decodes it as `T`.
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<T, FrameError> {
    let body = read_frame_bytes(r)?;
    Ok(serde_json::from_slice(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &serde_json::json!({"a": 1})).unwrap();
        assert_eq!(&buf[..4], &(7u32).to_be_bytes());
        let v: serde_json::Value = read_frame(&mut &buf[..]).unwrap();
        assert_eq!(v["a"], 1);
    }

    #[test]
    fn clean_close_and_torn_frame_differ() {
        let empty: &[u8] = &[];
        assert!(matches!(
            read_frame_bytes(&mut &empty[..]),
            Err(FrameError::Closed)
        ));
        let torn: &[u8] = &[0, 0];
        assert!(matches!(
            read_frame_bytes(&mut &torn[..]),
            Err(FrameError::Io(_))
        ));
        let short_body: &[u8] = &[0, 0, 0, 9, b'{'];
        assert!(matches!(
            read_frame_bytes(&mut &short_body[..]),
            Err(FrameError::Io(_))
        ));
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let huge = (MAX_FRAME_LEN + 1).to_be_bytes();
        assert!(matches!(
            read_frame_bytes(&mut &huge[..]),
            Err(FrameError::TooLarge(l)) if l == MAX_FRAME_LEN + 1
        ));
    }

    /// Found by `fuzz_call_answered_by_hostile_agent`: serde quotes an
    /// unknown variant verbatim, so a hostile agent's escape sequence
    /// reached the host's terminal through "malformed frame: ...".
    #[test]
    fn a_hostile_variant_name_prints_escaped() {
        let body = br#"{"version":1,"id":1,"result":{"\u001b[2J\u001b]0;owned\u0007":1}}"#;
        let mut buf = (body.len() as u32).to_be_bytes().to_vec();
        buf.extend_from_slice(body);
        let e = read_frame::<_, crate::ResponseFrame>(&mut &buf[..]).unwrap_err();
        assert!(matches!(e, FrameError::Json(_)), "{e:?}");
        let shown = crate::error_chain(&e);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(
            shown.contains("unknown variant `\\x1b[2J\\x1b]0;owned\\x07`"),
            "{shown}"
        );
    }

    #[test]
    fn garbage_is_a_json_error() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&3u32.to_be_bytes());
        buf.extend_from_slice(b"{{{");
        assert!(matches!(
            read_frame::<_, serde_json::Value>(&mut &buf[..]),
            Err(FrameError::Json(_))
        ));
    }
}
