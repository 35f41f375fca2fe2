//! Splits the bytes a control client sends into request lines, each of which must arrive
//! whole within [`READ_TIMEOUT`], with the descriptor (`SCM_RIGHTS`) sent along, if any.
//!
//! Owns the reading side of a connection; never parses a request nor writes to the
//! connection.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::MAX_REQUEST;
use super::server::READ_TIMEOUT;
use crate::sys::unix;

/// What the client sent next.
pub(crate) enum Next {
    /// A request line, with the descriptor (SCM_RIGHTS) that came while it was read, if any.
    Line(Vec<u8>, Option<OwnedFd>),
    /// The client closed the connection between requests.
    Closed,
    /// Nothing at all for [`READ_TIMEOUT`]: an idle connection, closed without a word (an
    /// error line could be taken for the answer to a request sent at that moment).
    Idle,
}

/// Splits what a client sends into request lines.
#[derive(Default)]
pub(crate) struct RequestReader {
    pending: Vec<u8>,
}

impl RequestReader {
    /// Whether bytes of a further request are waiting.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The deadline passed: an idle connection, or a request left incomplete.
    fn timed_out(&self) -> io::Result<Next> {
        if self.pending.is_empty() {
            Ok(Next::Idle)
        } else {
            Err(io::Error::new(io::ErrorKind::TimedOut, "no complete request in time"))
        }
    }

    /// The next line, which must arrive whole within [`READ_TIMEOUT`].
    pub(crate) fn next(&mut self, stream: &UnixStream) -> io::Result<Next> {
        let mut fd = None;
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.pending.drain(..=end).collect();
                line.pop();
                return Ok(Next::Line(line, fd));
            }
            if self.pending.len() > MAX_REQUEST {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "request too long"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return self.timed_out();
            }
            stream.set_read_timeout(Some(left))?;
            let (n, got) = match unix::recv_with_fd(stream, &mut buf) {
                Ok(got) => got,
                // A read timeout (EAGAIN).
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return self.timed_out();
                }
                Err(e) => return Err(e),
            };
            if fd.is_none() {
                fd = got;
            }
            if n == 0 {
                if self.pending.is_empty() {
                    return Ok(Next::Closed);
                }
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no complete line"));
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
    }
}
