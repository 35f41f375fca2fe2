//! The walk over a TCP option list, exactly as the kernel module does it
//! (spec, "TCP: the TOA option"): kind 0 (EOL) ends the list, kind 1 (NOP) is one byte,
//! every other option has a length byte, and a length below 2 or one that runs past the
//! header ends the walk ("don't parse partial options").
//!
//! Owns the walk only; what an option means is for its own module (see `toa`). Not
//! `etherparse`'s `TcpOptionsIterator`: it ends on the first kind it does not know (any
//! TOA kind among them) and on a known kind of another length than the RFC's, where the
//! module walks over every option by its length byte.

use super::Malformed;

const KIND_EOL: u8 = 0;
const KIND_NOP: u8 = 1;

/// One option with a length byte: its kind and the bytes after kind and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpOption<'a> {
    /// The option kind.
    pub kind: u8,
    /// The option's data (its length minus the two bytes of kind and length).
    pub data: &'a [u8],
}

/// Iterates over the options of a list, skipping NOPs, stopping at EOL. A length that
/// breaks the rules yields one `Err(Malformed::BadTcpOption)` and ends the walk.
#[derive(Debug, Clone)]
pub struct OptionWalk<'a> {
    rest: &'a [u8],
}

impl<'a> OptionWalk<'a> {
    /// Starts a walk over the option bytes of a TCP header.
    pub fn new(options: &'a [u8]) -> Self {
        OptionWalk { rest: options }
    }
}

impl<'a> Iterator for OptionWalk<'a> {
    type Item = Result<TcpOption<'a>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (&kind, after_kind) = self.rest.split_first()?;
            match kind {
                KIND_EOL => {
                    self.rest = &[];
                    return None;
                }
                KIND_NOP => self.rest = after_kind,
                _ => {
                    let len = self.rest.get(1).map_or(0, |&l| usize::from(l));
                    if len < 2 || len > self.rest.len() {
                        self.rest = &[];
                        return Some(Err(Malformed::BadTcpOption));
                    }
                    let option = TcpOption { kind, data: &self.rest[2..len] };
                    self.rest = &self.rest[len..];
                    return Some(Ok(option));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(options: &[u8]) -> Vec<Result<(u8, Vec<u8>), Malformed>> {
        OptionWalk::new(options).map(|r| r.map(|o| (o.kind, o.data.to_vec()))).collect()
    }

    #[test]
    fn nops_are_skipped_and_lengths_followed() {
        // NOP NOP TS(10) MSS(4)
        let opts = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 2, 4, 5, 0xb4];
        assert_eq!(walk(&opts), vec![Ok((8, vec![0, 0, 0, 1, 0, 0, 0, 2])), Ok((2, vec![5, 0xb4]))]);
    }

    #[test]
    fn eol_ends_the_list_even_with_bytes_after_it() {
        assert_eq!(walk(&[2, 4, 5, 0xb4, 0, 200, 8, 1, 2, 3, 4, 5, 6]), vec![Ok((2, vec![5, 0xb4]))]);
    }

    #[test]
    fn length_below_two_ends_the_walk_as_malformed() {
        assert_eq!(walk(&[200, 1, 0, 0]), vec![Err(Malformed::BadTcpOption)]);
        assert_eq!(walk(&[200, 0, 0, 0]), vec![Err(Malformed::BadTcpOption)]);
    }

    #[test]
    fn length_past_the_header_ends_the_walk_as_malformed() {
        assert_eq!(walk(&[1, 200, 8, 0, 80, 10]), vec![Err(Malformed::BadTcpOption)]);
    }

    #[test]
    fn kind_without_a_length_byte_is_malformed() {
        assert_eq!(walk(&[2, 4, 5, 0xb4, 200]), vec![Ok((2, vec![5, 0xb4])), Err(Malformed::BadTcpOption)]);
    }

    #[test]
    fn empty_and_all_nop_lists_have_no_options() {
        assert!(walk(&[]).is_empty());
        assert!(walk(&[1, 1, 1, 1]).is_empty());
    }
}
