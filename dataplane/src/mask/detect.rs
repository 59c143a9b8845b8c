//! Content detectors: e-mail addresses, payment card numbers, US social security numbers and phone
//! numbers inside a field's bytes.
//!
//! They are the second net of masking: output columns with no table origin (an expression the leak
//! analysis allowed, a function's result) are scanned per value, and a value that contains a
//! detected item anywhere is masked whole. Each detector is a hand-written scanner over bytes: no
//! allocation, no backtracking, and most bytes of a value are rejected by one comparison, so a
//! value without a match costs one pass per enabled kind. Only ASCII forms are recognised.

/// One kind of detected content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Email,
    Card,
    Ssn,
    Phone,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Email, Kind::Card, Kind::Ssn, Kind::Phone];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Email => "email",
            Kind::Card => "card",
            Kind::Ssn => "ssn",
            Kind::Phone => "phone",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    fn bit(self) -> u8 {
        match self {
            Kind::Email => 1,
            Kind::Card => 2,
            Kind::Ssn => 4,
            Kind::Phone => 8,
        }
    }

    /// Whether `value` contains an item of this kind.
    pub fn found_in(self, value: &[u8]) -> bool {
        self.found_in_counted(value, count_digits(value))
    }

    /// [`Kind::found_in`] with the value's ASCII digits already counted: most text has too few
    /// digits for a card, an SSN or a phone number, and one vectorisable pass over it rules them all
    /// out before any scanner runs.
    pub fn found_in_counted(self, value: &[u8], digits: usize) -> bool {
        match self {
            Kind::Email => has_email(value),
            Kind::Card => digits >= 13 && has_card(value),
            Kind::Ssn => digits >= 9 && has_ssn(value),
            Kind::Phone => digits >= 8 && has_phone(value),
        }
    }
}

/// The ASCII digits in `value`.
pub fn count_digits(value: &[u8]) -> usize {
    value.iter().filter(|b| b.is_ascii_digit()).count()
}

/// A set of kinds (a bit set: copying it costs nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Kinds(u8);

impl Kinds {
    pub fn insert(&mut self, kind: Kind) {
        self.0 |= kind.bit();
    }

    pub fn contains(self, kind: Kind) -> bool {
        self.0 & kind.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Kind> {
        Kind::ALL.into_iter().filter(move |k| self.contains(*k))
    }
}

/// The kinds among `wanted` that occur in `value`.
pub fn detect(value: &[u8], wanted: Kinds) -> Kinds {
    let mut found = Kinds::default();
    let digits = count_digits(value);
    for kind in wanted.iter() {
        if kind.found_in_counted(value, digits) {
            found.insert(kind);
        }
    }
    found
}

fn at(value: &[u8], i: usize) -> Option<u8> {
    value.get(i).copied()
}

fn is_digit_at(value: &[u8], i: usize) -> bool {
    at(value, i).is_some_and(|b| b.is_ascii_digit())
}

// --- e-mail ---------------------------------------------------------------------------------------

fn is_local_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-' | b'\'')
}

fn is_domain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')
}

/// `local@domain.tld`: a local part with at least one letter or digit, a domain of at least two
/// dot-separated labels (letters, digits, inner hyphens) whose last label is two or more letters.
fn has_email(value: &[u8]) -> bool {
    let mut from = 0;
    while let Some(offset) = value
        .get(from..)
        .and_then(|rest| rest.iter().position(|&b| b == b'@'))
    {
        let at_sign = from + offset;
        if email_at(value, at_sign) {
            return true;
        }
        from = at_sign + 1;
    }
    false
}

fn email_at(value: &[u8], at_sign: usize) -> bool {
    let local = value.get(..at_sign).unwrap_or_default();
    let local_ok = local
        .iter()
        .rev()
        .take_while(|&&b| is_local_byte(b))
        .any(u8::is_ascii_alphanumeric);
    if !local_ok {
        return false;
    }
    let rest = value.get(at_sign + 1..).unwrap_or_default();
    let end = rest
        .iter()
        .position(|&b| !is_domain_byte(b))
        .unwrap_or(rest.len());
    let domain = rest.get(..end).unwrap_or_default();
    // A sentence may end right after the address: "mail jane@example.com."
    let domain = trim_end(domain, b'.');
    let mut labels = 0usize;
    let mut last_alpha = false;
    let mut last_len = 0usize;
    for label in domain.split(|&b| b == b'.') {
        if label.is_empty() || label.first() == Some(&b'-') || label.last() == Some(&b'-') {
            return false;
        }
        labels += 1;
        last_len = label.len();
        last_alpha = label.iter().all(u8::is_ascii_alphabetic);
    }
    labels >= 2 && last_alpha && last_len >= 2
}

fn trim_end(mut s: &[u8], byte: u8) -> &[u8] {
    while let Some((&last, rest)) = s.split_last() {
        if last != byte {
            break;
        }
        s = rest;
    }
    s
}

// --- payment cards --------------------------------------------------------------------------------

/// 13 to 19 digits, optionally grouped by single spaces or dashes, passing the Luhn check, not
/// starting with 0, and not part of a longer digit run. Groups are taken whole: inside a longer
/// grouped run (an order number before a card), a card starting at any group is found.
fn has_card(value: &[u8]) -> bool {
    digit_runs(value).any(|i| card_from(value, i))
}

/// The position of the first digit of every run of digits: where a number can start.
fn digit_runs(value: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut previous_digit = false;
    value.iter().enumerate().filter_map(move |(i, b)| {
        let digit = b.is_ascii_digit();
        let start = digit && !previous_digit;
        previous_digit = digit;
        start.then_some(i)
    })
}

/// Whether a card number starts at `start`, the first digit of a group.
fn card_from(value: &[u8], start: usize) -> bool {
    if at(value, start) == Some(b'0') {
        return false;
    }
    let mut digits = 0usize;
    let mut i = start;
    loop {
        // One group of digits.
        while is_digit_at(value, i) {
            digits += 1;
            i += 1;
        }
        if digits > 19 {
            return false;
        }
        if digits >= 13 && luhn(value.get(start..i).unwrap_or_default()) {
            return true;
        }
        // A single separator followed by a digit continues the number.
        match at(value, i) {
            Some(b' ' | b'-') if is_digit_at(value, i + 1) => i += 1,
            _ => return false,
        }
    }
}

/// The Luhn check over the digits of `s` (other bytes are skipped).
fn luhn(s: &[u8]) -> bool {
    let mut sum = 0u32;
    let mut double = false;
    for &b in s.iter().rev() {
        if !b.is_ascii_digit() {
            continue;
        }
        let mut d = u32::from(b - b'0');
        if double {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        double = !double;
    }
    sum.is_multiple_of(10)
}

// --- US social security numbers -------------------------------------------------------------------

/// `AAA-GG-SSSS` or `AAA GG SSSS` (the same separator twice), not inside a longer digit run, with a
/// number that can be issued: area not 000, 666 or 9xx, group not 00, serial not 0000. Nine bare
/// digits are not detected (too many other numbers look like them).
fn has_ssn(value: &[u8]) -> bool {
    digit_runs(value).any(|i| ssn_at(value, i))
}

fn ssn_at(value: &[u8], i: usize) -> bool {
    let Some(s) = value.get(i..i + 11) else {
        return false;
    };
    let shape = s.iter().enumerate().all(|(j, &b)| match j {
        3 | 6 => b == b'-' || b == b' ',
        _ => b.is_ascii_digit(),
    });
    if !shape || s.get(3) != s.get(6) || is_digit_at(value, i + 11) {
        return false;
    }
    let area = s.get(..3).unwrap_or_default();
    let group = s.get(4..6).unwrap_or_default();
    let serial = s.get(7..11).unwrap_or_default();
    area != b"000"
        && area != b"666"
        && area.first() != Some(&b'9')
        && group != b"00"
        && serial != b"0000"
}

// --- phone numbers --------------------------------------------------------------------------------

/// North American numbers with separators — `(212) 555-0123`, `212-555-0123`, `212.555.0123`,
/// `212 555 0123`, optionally after `+1` or `1` — whose area code and exchange start with 2-9, and
/// international numbers written with a leading `+`: a 1-3 digit country code, then groups of
/// digits separated by single spaces, dashes or dots, 8 to 15 digits in all (E.164). Ten bare
/// digits are not detected.
fn has_phone(value: &[u8]) -> bool {
    // The byte before `i`; NUL before the first, which starts a number like a space would.
    let mut previous = 0u8;
    for (i, &b) in value.iter().enumerate() {
        let starts = match b {
            b'+' => !previous.is_ascii_alphanumeric(),
            b'(' => true,
            b'0'..=b'9' => !(previous.is_ascii_alphanumeric() || previous == b'+'),
            _ => false,
        };
        if starts && (nanp_at(value, i) || (b == b'+' && international_at(value, i))) {
            return true;
        }
        previous = b;
    }
    false
}

/// Reads exactly `n` digits at `*i`; the first must be 2-9 when `nxx`.
fn digits(value: &[u8], i: &mut usize, n: usize, nxx: bool) -> bool {
    for k in 0..n {
        match at(value, *i + k) {
            Some(b'2'..=b'9') => {}
            Some(b'0' | b'1') if !(nxx && k == 0) => {}
            _ => return false,
        }
    }
    *i += n;
    true
}

fn separator(b: Option<u8>) -> bool {
    matches!(b, Some(b' ' | b'-' | b'.'))
}

fn nanp_at(value: &[u8], start: usize) -> bool {
    let mut i = start;
    let mut marked = false; // a +1, parentheses or separators: something that says "phone"
    if at(value, i) == Some(b'+') {
        if at(value, i + 1) != Some(b'1') {
            return false;
        }
        i += 2;
        marked = true;
        if separator(at(value, i)) {
            i += 1;
        }
    } else if at(value, i) == Some(b'1') && separator(at(value, i + 1)) {
        i += 2;
    }
    let paren = at(value, i) == Some(b'(');
    if paren {
        i += 1;
    }
    if !digits(value, &mut i, 3, true) {
        return false;
    }
    if paren {
        if at(value, i) != Some(b')') {
            return false;
        }
        i += 1;
        marked = true;
        if at(value, i) == Some(b' ') {
            i += 1;
        }
    } else if separator(at(value, i)) {
        i += 1;
        marked = true;
    }
    if !digits(value, &mut i, 3, true) {
        return false;
    }
    let sep = at(value, i);
    if separator(sep) {
        i += 1;
        marked = true;
    } else if !paren && !marked {
        return false;
    }
    if !digits(value, &mut i, 4, false) {
        return false;
    }
    marked && !is_digit_at(value, i)
}

fn international_at(value: &[u8], start: usize) -> bool {
    let mut i = start + 1;
    let mut total = 0usize;
    let mut groups = 0usize;
    loop {
        let begin = i;
        while is_digit_at(value, i) {
            i += 1;
        }
        let len = i - begin;
        if len == 0 || (groups == 0 && len > 3) {
            return false;
        }
        total += len;
        groups += 1;
        if total > 15 {
            return false;
        }
        if separator(at(value, i)) && is_digit_at(value, i + 1) {
            i += 1;
            continue;
        }
        return groups >= 3 && total >= 8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all() -> Kinds {
        let mut k = Kinds::default();
        for kind in Kind::ALL {
            k.insert(kind);
        }
        k
    }

    fn kinds(value: &str) -> Vec<&'static str> {
        detect(value.as_bytes(), all())
            .iter()
            .map(Kind::name)
            .collect()
    }

    #[test]
    fn emails() {
        for v in [
            "jane.doe42@example.com",
            "contact: o'brien+news@mail.example.co.uk.",
            "<a.b_c%d@sub-domain.example.org>",
            "{\"email\": \"x@example.net\"}",
        ] {
            assert_eq!(kinds(v), ["email"], "{v}");
        }
        for v in [
            "user@localhost",
            "@example.com",
            "jane@",
            "jane@example",
            "jane@example.c",
            "jane@-example.com",
            "jane@example..com",
            "a@b.c0m",
            "price @ 5.00",
            "...@example.com",
        ] {
            assert!(kinds(v).is_empty(), "{v}");
        }
    }

    #[test]
    fn cards() {
        for v in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "card 5500-0000-0000-0004 exp 12/29",
            "378282246310005",           // Amex, 15 digits
            "6011 0009 9013 9424",       // Discover
            "order 77 4012888888881881", // a card after another number
            "4222222222222",             // 13 digits
        ] {
            assert_eq!(kinds(v), ["card"], "{v}");
        }
        for v in [
            "4111111111111112",     // Luhn fails
            "4111 1111 1111 1112",  // Luhn fails, grouped
            "411111111111",         // 12 digits
            "41111111111111111111", // 20 digits
            "0000 0000 0000 0000",  // passes Luhn, starts with 0
            "4111  1111 1111 1111", // two spaces break the number
            "14111111111111111111", // a valid card inside a longer run is not one
            "4111-1111-1111-111",   // 15 digits, Luhn fails
        ] {
            assert!(!kinds(v).contains(&"card"), "{v}");
        }
    }

    #[test]
    fn ssns() {
        for v in ["123-45-6789", "ssn: 078 05 1120", "899-01-0001;"] {
            assert_eq!(kinds(v), ["ssn"], "{v}");
        }
        for v in [
            "000-12-3456", // area 000
            "666-12-3456", // area 666
            "900-12-3456", // area 9xx
            "987-65-4321", // area 9xx
            "123-00-4567", // group 00
            "123-45-0000", // serial 0000
            "123456789",   // bare digits
            "123-45 6789", // mixed separators
            "1123-45-6789",
            "123-45-67890",
        ] {
            assert!(!kinds(v).contains(&"ssn"), "{v}");
        }
    }

    #[test]
    fn phones() {
        for v in [
            "(212) 555-0123",
            "call 212-555-0123 today",
            "212.555.0123",
            "+1 415 555 0199",
            "+1-312-555-0100",
            "1-800-555-0199",
            "+44 20 7946 0958",
            "+49-30-901820",
            "(212)555-0123",
        ] {
            assert_eq!(kinds(v), ["phone"], "{v}");
        }
        for v in [
            "2125550123",       // bare digits
            "(012) 555-0123",   // area code starts with 0
            "212-155-0123",     // exchange starts with 1
            "2024-01-15 10:30", // a timestamp
            "+44",
            "+1234567",
            "v1.2.3",
            "12-555-0123",
            "212-555-01234",
            "x212-555-0123", // inside a word
        ] {
            assert!(!kinds(v).contains(&"phone"), "{v}");
        }
    }

    #[test]
    fn several_kinds_and_names() {
        assert_eq!(
            kinds("jane@example.com 123-45-6789 4111111111111111"),
            ["email", "card", "ssn"]
        );
        for kind in Kind::ALL {
            assert_eq!(Kind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(Kind::from_name("iban"), None);
        let mut only_ssn = Kinds::default();
        only_ssn.insert(Kind::Ssn);
        assert!(detect(b"jane@example.com", only_ssn).is_empty());
    }

    proptest! {
        #[test]
        fn any_bytes_are_scanned_without_panic(value in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = detect(&value, all());
        }

        #[test]
        fn phone_like_text_is_scanned_without_panic(value in "[0-9 ()+.@a-z-]{0,64}") {
            let _ = detect(value.as_bytes(), all());
        }

        #[test]
        fn a_valid_card_is_found_wherever_it_is(prefix in "[a-z ]{0,10}", suffix in "[a-z ]{0,10}") {
            let value = format!("{prefix}4111-1111-1111-1111{suffix}");
            prop_assert!(detect(value.as_bytes(), all()).contains(Kind::Card));
        }
    }
}
