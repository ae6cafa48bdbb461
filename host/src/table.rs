//! Tables that fit the terminal: left-aligned columns two spaces apart, and when the natural
//! widths add up to more than the terminal has, the widest columns are narrowed and their cells
//! wrapped onto more lines (at spaces where possible), as `kubectl` and `cargo tree` keep to the
//! screen. Nothing is cut off: a wrapped row still holds every character. The width is `COLUMNS`
//! when set, else the terminal's (stdout), else unlimited (a pipe gets one line per row).

use std::io::IsTerminal;

/// The narrowest a wrapped column gets (narrower columns keep their natural width).
const MIN_WRAPPED: usize = 10;
/// Columns at most this wide (states, names, counts) keep their width when the wide ones can
/// still get [`MIN_WRAPPED`] each: a word like `pond_initialized` is not split to save a column.
const SHORT: usize = 20;

/// The width to fit output into: `COLUMNS`, else stdout's terminal width, else none.
pub fn output_width() -> Option<usize> {
    if let Some(columns) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|c| *c > 0)
    {
        return Some(columns);
    }
    let stdout = std::io::stdout();
    if !stdout.is_terminal() {
        return None;
    }
    terminal_size::terminal_size_of(&stdout).map(|(w, _)| usize::from(w.0))
}

/// Column widths for cells of `natural` widths within `total` (`None`: natural widths).
pub fn fit(natural: &[usize], total: Option<usize>) -> Vec<usize> {
    let Some(total) = total else {
        return natural.to_vec();
    };
    let gaps = 2 * natural.len().saturating_sub(1);
    let mut widths = natural.to_vec();
    if widths.iter().sum::<usize>() + gaps <= total {
        return widths;
    }
    // Water-filling: columns narrower than a fair share keep their width; the rest share what is
    // left equally (never below MIN_WRAPPED, so a very narrow terminal overflows rather than
    // shows one letter per line). Short columns are served first when that leaves enough.
    let mut budget = total.saturating_sub(gaps);
    let mut open: Vec<usize> = (0..widths.len()).collect();
    let (short, long): (Vec<usize>, Vec<usize>) = open.iter().partition(|&&i| natural[i] <= SHORT);
    let short_sum: usize = short.iter().map(|&i| natural[i]).sum();
    if !long.is_empty() && short_sum + long.len() * MIN_WRAPPED <= budget {
        budget -= short_sum;
        open = long;
    }
    loop {
        let share = budget / open.len().max(1);
        let (keep, narrow): (Vec<usize>, Vec<usize>) =
            open.iter().partition(|&&i| natural[i] <= share);
        if keep.is_empty() {
            for &i in &narrow {
                widths[i] = share.max(MIN_WRAPPED).min(natural[i]);
            }
            // Hand the rounding remainder to the first narrowed columns.
            let mut spare = budget.saturating_sub(narrow.iter().map(|&i| widths[i]).sum());
            for &i in &narrow {
                let extra = spare.min(natural[i] - widths[i]);
                widths[i] += extra;
                spare -= extra;
            }
            return widths;
        }
        for &i in &keep {
            budget = budget.saturating_sub(natural[i]);
        }
        open = narrow;
        if open.is_empty() {
            return widths;
        }
    }
}

/// `text` in lines of at most `width` characters, broken after a space when one is near.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if width == 0 || chars.len() <= width {
        return vec![text.to_owned()];
    }
    let mut lines = Vec::new();
    let mut start = 0;
    while start < chars.len() {
        let mut end = (start + width).min(chars.len());
        if end < chars.len() {
            // Break after the last space in the second half of the line, if any.
            if let Some(space) = (start + width / 2..end).rev().find(|&i| chars[i] == ' ') {
                end = space + 1;
            }
        }
        lines.push(
            chars[start..end]
                .iter()
                .collect::<String>()
                .trim_end()
                .to_owned(),
        );
        start = end;
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_by_narrowing_the_widest() {
        assert_eq!(fit(&[4, 300], Some(80)), vec![4, 74]);
        assert_eq!(fit(&[4, 6], Some(80)), vec![4, 6]);
        assert_eq!(fit(&[4, 6], None), vec![4, 6]);
        let w = fit(&[20, 200, 100, 5], Some(80));
        assert!(w.iter().sum::<usize>() + 6 <= 80, "{w:?}");
        assert_eq!((w[0], w[3]), (20, 5));
        // Short columns first: the 16-wide one is not split although a fair share is 11.
        let w = fit(&[15, 80, 16, 8, 60, 300], Some(80));
        assert_eq!((w[0], w[2], w[3]), (15, 16, 8), "{w:?}");
        assert!(w.iter().sum::<usize>() + 10 <= 80, "{w:?}");
    }

    #[test]
    fn wraps_at_spaces_and_keeps_every_character() {
        assert_eq!(wrap("abcdef", 4), vec!["abcd", "ef"]);
        assert_eq!(wrap("one two three", 8), vec!["one two", "three"]);
        assert_eq!(wrap("short", 10), vec!["short"]);
    }
}
