//! Splitting request text at an ASCII byte: what `str::split_once(char)` does, as a plain loop. The
//! strings split per request (a service-proxy path, a bearer value) are short, where `str`'s searcher
//! costs more to set up than the search; an ASCII byte never lies inside a multi-byte character, so
//! both halves are whole `str`s.

/// `s` before and after the first `byte` (ASCII), or `None` if it has none.
pub fn once(s: &str, byte: u8) -> Option<(&str, &str)> {
    debug_assert!(byte.is_ascii());
    let i = s.bytes().position(|b| b == byte)?;
    Some((&s[..i], &s[i + 1..]))
}

/// The index of the first `byte` (ASCII) in `s`.
pub fn find(s: &str, byte: u8) -> Option<usize> {
    debug_assert!(byte.is_ascii());
    s.bytes().position(|b| b == byte)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn splits_as_str_does(s in "\\PC{0,40}", pick in 0usize..4) {
            let byte = [b'/', b':', b' ', b'a'][pick];
            prop_assert_eq!(once(&s, byte), s.split_once(char::from(byte)));
            prop_assert_eq!(find(&s, byte), s.find(char::from(byte)));
        }
    }
}
