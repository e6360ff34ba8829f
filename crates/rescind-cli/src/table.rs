//! Plain-text tables whose columns line up by *display* width: a CJK
//! character takes two terminal columns, a combining mark none, so padding
//! with `format!("{:<20}")` (which counts `char`s) shifts every column after
//! a reason or order id in Chinese. Every cell goes through
//! [`safe`](crate::journal_cmd::safe) first, so control characters are
//! escaped before they are measured or printed.

use crate::journal_cmd::safe;
use unicode_width::UnicodeWidthStr;

/// How a column's cells are padded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Align {
    /// Text: padded on the right.
    Left,
    /// Numbers: padded on the left.
    Right,
}

/// A table built row by row and rendered as lines.
pub(crate) struct Table {
    aligns: Vec<Align>,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// The terminal width of `text` (already escaped).
pub(crate) fn display_width(text: &str) -> usize {
    UnicodeWidthStr::width(text)
}

/// `text` padded with spaces to `width` display columns.
pub(crate) fn pad(text: &str, width: usize, align: Align) -> String {
    let fill = " ".repeat(width.saturating_sub(display_width(text)));
    match align {
        Align::Left => format!("{text}{fill}"),
        Align::Right => format!("{fill}{text}"),
    }
}

impl Table {
    /// A table with these column headers and alignments (one per column).
    pub(crate) fn new(columns: &[(&str, Align)]) -> Self {
        Table {
            aligns: columns.iter().map(|(_, a)| *a).collect(),
            header: columns.iter().map(|(h, _)| safe(h)).collect(),
            rows: Vec::new(),
        }
    }

    /// Add a row; missing cells are empty, extra cells are dropped.
    pub(crate) fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut row: Vec<String> = cells
            .into_iter()
            .take(self.aligns.len())
            .map(|c| safe(c.as_ref()))
            .collect();
        row.resize(self.aligns.len(), String::new());
        self.rows.push(row);
    }

    /// The header line, then one line per row. Columns are separated by two
    /// spaces; the last column is not padded (no trailing blanks) unless it
    /// is right-aligned.
    pub(crate) fn lines(&self) -> Vec<String> {
        let widths: Vec<usize> = (0..self.aligns.len())
            .map(|i| {
                std::iter::once(&self.header)
                    .chain(&self.rows)
                    .map(|r| display_width(&r[i]))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let last = self.aligns.len().saturating_sub(1);
        std::iter::once(&self.header)
            .chain(&self.rows)
            .map(|r| {
                r.iter()
                    .enumerate()
                    .map(|(i, cell)| {
                        if i == last && self.aligns[i] == Align::Left {
                            cell.clone()
                        } else {
                            pad(cell, widths[i], self.aligns[i])
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("  ")
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cjk_cells_keep_the_next_column_aligned() {
        let mut t = Table::new(&[
            ("order", Align::Left),
            ("n", Align::Right),
            ("reason", Align::Left),
        ]);
        t.row(["订单-1", "7", "买家取消"]);
        t.row(["order-22", "12", "x"]);
        t.row(["e\u{301}", "3", "é"]);
        let lines = t.lines();
        assert_eq!(lines.len(), 4);
        // The third column starts at the same display column in every line.
        let starts: Vec<usize> = lines
            .iter()
            .map(|l| {
                let byte = l.rfind("  ").expect("separator") + 2;
                display_width(&l[..byte])
            })
            .collect();
        assert!(starts.iter().all(|s| *s == starts[0]), "{lines:#?}");
        // 订单-1 is 6 display columns; order-22 is 8: the widest sets the width.
        assert!(lines[1].starts_with("订单-1    "), "{lines:#?}");
    }

    #[test]
    fn control_characters_are_escaped_before_measuring() {
        let mut t = Table::new(&[("a", Align::Left), ("b", Align::Left)]);
        t.row(["x\r\ny", "z"]);
        let lines = t.lines();
        assert_eq!(lines[1], "x\\r\\ny  z", "{lines:#?}");
        assert!(!lines.iter().any(|l| l.contains('\r') || l.contains('\n')));
    }

    #[test]
    fn numbers_are_right_aligned_and_short_rows_are_filled() {
        let mut t = Table::new(&[("n", Align::Right), ("what", Align::Left)]);
        t.row(["5"]);
        t.row(["123", "y"]);
        assert_eq!(t.lines(), vec!["  n  what", "  5  ", "123  y"]);
    }
}
