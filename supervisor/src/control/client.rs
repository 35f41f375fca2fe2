//! The client side of the control socket: [`Connection`] sends requests and reads their
//! answers, a `mappings` answer element by element as it arrives.
//!
//! Owns the client's exchange and its errors ([`ControlError`]); never answers a request, and
//! never talks to a socket served by another user than root or its own.

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{Request, trusted_user};
use crate::sys::unix;

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nothing listens at the path.
    #[error(
        "no ipvsca supervisor at {path}: {error} (start one with `ipvsca supervise`, or pass the control socket of an `ipvsca-run` with --control)"
    )]
    Unreachable {
        /// The path tried.
        path: PathBuf,
        /// What connect said.
        error: std::io::Error,
    },
    /// The exchange failed half-way.
    #[error("talking to the supervisor at {path}: {error}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        error: std::io::Error,
    },
    /// The supervisor answered something this client does not understand.
    #[error("the supervisor at {path} answered something unexpected: {answer}")]
    Garbled {
        /// The path.
        path: PathBuf,
        /// The answer.
        answer: String,
    },
    /// The supervisor refused the request.
    #[error("{0}")]
    Refused(String),
    /// What listens at the path runs as another user than root or this one: it is not
    /// told anything (a launcher would hand it a service).
    #[error("the process listening at {path} runs as uid {uid}, neither root nor this user: refusing to talk to it")]
    Untrusted {
        /// The path.
        path: PathBuf,
        /// Its user.
        uid: u32,
    },
}

/// How long a client waits for the next bytes of an answer: an idle timeout, so that a
/// long `mappings` answer that keeps coming is read to its end.
pub(crate) const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// An open exchange with a supervisor.
#[derive(Debug)]
pub struct Connection {
    path: PathBuf,
    reader: BufReader<UnixStream>,
}

impl Connection {
    /// Connects to the control socket at `path`, served by root or this process's user.
    pub fn open(path: &Path) -> Result<Self, ControlError> {
        let stream =
            UnixStream::connect(path).map_err(|error| ControlError::Unreachable { path: path.to_owned(), error })?;
        let io = |error| ControlError::Io { path: path.to_owned(), error };
        let uid = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
            .map_err(|e| io(e.into()))?
            .uid();
        if !trusted_user(uid) {
            return Err(ControlError::Untrusted { path: path.to_owned(), uid });
        }
        stream.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(ANSWER_TIMEOUT)).map_err(io)?;
        Ok(Connection { path: path.to_owned(), reader: BufReader::new(stream) })
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> ControlError + '_ {
        |error| ControlError::Io { path: self.path.clone(), error }
    }

    /// The error for a request whose send failed with `error`. A supervisor that refuses a
    /// connection (another user, too many connections) says why and closes it, perhaps
    /// before the request is written: its words are still there to read, and they are the
    /// error to show.
    fn send_failed(&mut self, error: std::io::Error) -> ControlError {
        let mut answer = String::new();
        if refused_at_connect(&error)
            && self.reader.read_line(&mut answer).is_ok()
            && let Ok(Value::Object(mut o)) = serde_json::from_str::<Value>(&answer)
            && let Some(Value::String(refusal)) = o.remove("error")
        {
            return ControlError::Refused(refusal);
        }
        self.io()(error)
    }

    /// Sends `request` (with `fd` attached, for `attach`) and reads the answer.
    pub fn request(&mut self, request: &Request, fd: Option<BorrowedFd<'_>>) -> Result<Value, ControlError> {
        let mut line = serde_json::to_vec(request).expect("requests serialise");
        line.push(b'\n');
        if let Err(error) = unix::send_with_fd(self.reader.get_ref(), &line, fd) {
            return Err(self.send_failed(error));
        }
        let mut answer = String::new();
        self.reader.read_line(&mut answer).map_err(self.io())?;
        let garbled = || ControlError::Garbled { path: self.path.clone(), answer: answer.trim().to_owned() };
        let parsed: Value = serde_json::from_str(&answer).map_err(|_| garbled())?;
        match parsed {
            Value::Object(mut o) if o.len() == 1 => {
                if let Some(v) = o.remove("ok") {
                    Ok(v)
                } else if let Some(Value::String(e)) = o.remove("error") {
                    Err(ControlError::Refused(e))
                } else {
                    Err(garbled())
                }
            }
            _ => Err(garbled()),
        }
    }

    /// Sends `request`, whose answer is an array, and calls `each` with its elements as they
    /// arrive, never holding the whole answer (`mappings`, a million entries or more). Stops
    /// reading when `each` returns false; the connection, left in the middle of an answer,
    /// is closed.
    pub fn request_each(mut self, request: &Request, mut each: impl FnMut(Value) -> bool) -> Result<(), ControlError> {
        let mut line = serde_json::to_vec(request).expect("requests serialise");
        line.push(b'\n');
        if let Err(error) = self.reader.get_mut().write_all(&line) {
            return Err(self.send_failed(error));
        }
        let mut stopped = false;
        let answer = {
            let mut de = serde_json::Deserializer::from_reader(&mut self.reader);
            de.deserialize_map(StreamedAnswer { each: &mut each, stopped: &mut stopped })
        };
        match answer {
            _ if stopped => Ok(()),
            Ok(Ok(())) => {
                // The rest of the line: its end.
                let mut rest = String::new();
                self.reader.read_line(&mut rest).map_err(self.io())?;
                if rest.trim().is_empty() {
                    Ok(())
                } else {
                    Err(ControlError::Garbled { path: self.path.clone(), answer: rest.trim().to_owned() })
                }
            }
            Ok(Err(refusal)) => Err(ControlError::Refused(refusal)),
            Err(e) if e.is_io() => Err(self.io()(e.into())),
            Err(e) if e.is_eof() => Err(self.io()(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the supervisor closed the connection before the end of its answer",
            ))),
            Err(e) => Err(ControlError::Garbled { path: self.path.clone(), answer: e.to_string() }),
        }
    }

    /// The stream, once a request was answered, without timeouts: `attach` keeps it open
    /// as a lifeline.
    pub fn into_stream(self) -> std::io::Result<UnixStream> {
        let stream = self.reader.into_inner();
        stream.set_read_timeout(None)?;
        stream.set_write_timeout(None)?;
        Ok(stream)
    }
}

/// Whether a failed send means the supervisor closed the connection, perhaps after writing
/// why.
fn refused_at_connect(error: &std::io::Error) -> bool {
    matches!(error.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset)
}

/// One request on a fresh connection.
pub fn request(path: &Path, request: &Request) -> Result<Value, ControlError> {
    Connection::open(path)?.request(request, None)
}

/// Reads an answer `{"ok": [...]}` element by element, or `{"error": "..."}` (as the
/// refusal, `Ok(Err)`).
struct StreamedAnswer<'a, F> {
    each: &'a mut F,
    stopped: &'a mut bool,
}

impl<'de, F: FnMut(Value) -> bool> Visitor<'de> for StreamedAnswer<'_, F> {
    type Value = Result<(), String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"{"ok": [...]} or {"error": "..."}"#)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let key: String = map.next_key()?.ok_or_else(|| de::Error::custom("an empty answer"))?;
        let answer = match key.as_str() {
            "ok" => map.next_value_seed(Elements { each: self.each, stopped: self.stopped }).map(Ok)?,
            "error" => Err(map.next_value::<String>()?),
            other => return Err(de::Error::custom(format!("an answer with {other:?}"))),
        };
        if map.next_key::<IgnoredAny>()?.is_some() {
            return Err(de::Error::custom("an answer with more than one member"));
        }
        Ok(answer)
    }
}

/// The elements of the array of a [`StreamedAnswer`], each handed over as it is read.
struct Elements<'a, F> {
    each: &'a mut F,
    stopped: &'a mut bool,
}

impl<'de, F: FnMut(Value) -> bool> DeserializeSeed<'de> for Elements<'_, F> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, F: FnMut(Value) -> bool> Visitor<'de> for Elements<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(element) = seq.next_element::<Value>()? {
            if !(self.each)(element) {
                // Not an error of the answer: `request_each` looks at `stopped` first.
                *self.stopped = true;
                return Err(de::Error::custom("stopped by the reader"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection whose other end is `server`, answering as the test writes.
    fn connected() -> (Connection, UnixStream) {
        let (client, server) = UnixStream::pair().unwrap();
        client.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
        (Connection { path: "test.sock".into(), reader: BufReader::new(client) }, server)
    }

    /// A supervisor that refuses a connection writes why and closes it; a request written
    /// after the close fails with `EPIPE`, and the refusal is still what the client shows
    /// (operations.rs once saw "Broken pipe" instead).
    #[test]
    fn a_refusal_written_before_the_request_is_shown_rather_than_the_broken_pipe() {
        for streamed in [false, true] {
            let (mut connection, mut server) = connected();
            server.write_all(b"{\"error\":\"permission denied: go away\"}\n").unwrap();
            drop(server);
            let refusal = if streamed {
                connection.request_each(&Request::Mappings { limit: None, filter: None }, |_| true).unwrap_err()
            } else {
                connection.request(&Request::Version, None).unwrap_err()
            };
            assert!(matches!(&refusal, ControlError::Refused(r) if r == "permission denied: go away"), "{refusal:?}");
        }
        // Closed without a word: the send's own error.
        let (mut connection, server) = connected();
        drop(server);
        let error = connection.request(&Request::Version, None).unwrap_err();
        assert!(
            matches!(&error, ControlError::Io { error, .. } if error.kind() == std::io::ErrorKind::BrokenPipe),
            "{error:?}"
        );
    }

    #[test]
    fn a_streamed_answer_is_read_element_by_element() {
        let (connection, mut server) = connected();
        let writer = std::thread::spawn(move || {
            let mut request = String::new();
            BufReader::new(&server).read_line(&mut request).unwrap();
            assert_eq!(request, "{\"op\":\"mappings\",\"limit\":3}\n");
            for piece in ["{\"ok\":[", "{\"a\":1}", ",{\"a\":2}", ",{\"a\":3}", "]}\n"] {
                server.write_all(piece.as_bytes()).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        let mut seen = Vec::new();
        connection
            .request_each(&Request::Mappings { limit: Some(3), filter: None }, |v| {
                seen.push(v["a"].as_u64().unwrap());
                true
            })
            .unwrap();
        assert_eq!(seen, [1, 2, 3]);
        writer.join().unwrap();

        let (connection, mut server) = connected();
        server.write_all(b"{\"error\":\"filter \\\"x\\\": give an IP address\"}\n").unwrap();
        let refused = connection.request_each(&Request::Mappings { limit: None, filter: None }, |_| true);
        assert!(matches!(refused, Err(ControlError::Refused(e)) if e.starts_with("filter \"x\"")));

        // Stopped by the reader: no error.
        let (connection, mut server) = connected();
        server.write_all(b"{\"ok\":[1,2,3").unwrap();
        let mut count = 0;
        connection
            .request_each(&Request::Mappings { limit: None, filter: None }, |_| {
                count += 1;
                count < 2
            })
            .unwrap();
        assert_eq!(count, 2);

        // Cut short by the server: an error.
        let (connection, mut server) = connected();
        server.write_all(b"{\"ok\":[1,2").unwrap();
        server.shutdown(std::net::Shutdown::Write).unwrap();
        let cut = connection.request_each(&Request::Mappings { limit: None, filter: None }, |_| true);
        assert!(
            matches!(&cut, Err(ControlError::Io { error, .. }) if error.kind() == std::io::ErrorKind::UnexpectedEof),
            "{cut:?}"
        );
    }
}
