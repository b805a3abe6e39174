//! Splitting text at ASCII separators (`/`, `?`, `&`, `=`, `,`) with plain
//! byte scans: paths and query strings are parsed on every request, and for
//! strings this short a byte loop is several times cheaper than
//! `str::split` with a `char` pattern. Splitting at an ASCII byte always
//! lands on a character boundary, so every piece is a valid `&str`.

/// Splits `s` at the first `sep`: the text before it and after it.
pub fn split_once(s: &str, sep: u8) -> Option<(&str, &str)> {
    debug_assert!(sep.is_ascii());
    let i = s.bytes().position(|b| b == sep)?;
    Some((&s[..i], &s[i + 1..]))
}

/// Every piece of `s` between `sep`s, like `s.split(sep as char)`: an
/// empty `s` gives one empty piece.
pub fn split(s: &str, sep: u8) -> Split<'_> {
    debug_assert!(sep.is_ascii());
    Split { rest: Some(s), sep }
}

/// Iterator returned by [`split`].
#[derive(Clone, Debug)]
pub struct Split<'a> {
    rest: Option<&'a str>,
    sep: u8,
}

impl<'a> Iterator for Split<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        match split_once(rest, self.sep) {
            Some((piece, after)) => {
                self.rest = Some(after);
                Some(piece)
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_str_split() {
        for s in [
            "",
            "a",
            "/",
            "a/b",
            "/a//b/",
            "ä/ö/",
            "x?y?z",
            "&&",
            "k=v&é=ü",
        ] {
            for sep in [b'/', b'?', b'&', b'='] {
                let ours: Vec<&str> = split(s, sep).collect();
                let std: Vec<&str> = s.split(sep as char).collect();
                assert_eq!(ours, std, "{s:?} at {:?}", sep as char);
                assert_eq!(split_once(s, sep), s.split_once(sep as char), "{s:?}");
            }
        }
    }
}
