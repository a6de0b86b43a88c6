//! A host terminal's window size: the monitor copies its own terminal's to
//! the container's pty, and `husk exec -t` the caller's to the process's;
//! both send it to the agent as a `ResizeTty`.

use std::os::fd::{AsFd, AsRawFd};

/// The window size (rows, cols) of terminal `tty`, or None when it is not
/// a terminal or has no size yet (0 rows).
pub fn window_size(tty: impl AsFd) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`; `tty` is open.
    let r = unsafe { libc::ioctl(tty.as_fd().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (r >= 0 && ws.ws_row != 0).then_some((ws.ws_row, ws.ws_col))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_file_has_no_window_size() {
        let f = tempfile::tempfile().unwrap();
        assert_eq!(super::window_size(&f), None);
    }
}
