//! How listing and inspecting commands print: `-o table|wide|json` (kubectl's and containerlab's
//! habit) with `--json` kept as the short form of `-o json`.

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Columns that fit a terminal.
    Table,
    /// The table with more columns.
    Wide,
    /// JSON, for scripts.
    Json,
}

/// The output arguments of a listing or inspecting command.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct OutputArgs {
    /// Print JSON (the same as `-o json`).
    #[arg(long, conflicts_with = "output")]
    pub json: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, value_name = "FORMAT")]
    pub output: Option<Format>,
}

impl OutputArgs {
    /// The format asked for (table unless told otherwise).
    pub fn format(self) -> Format {
        match (self.json, self.output) {
            (true, _) => Format::Json,
            (false, Some(f)) => f,
            (false, None) => Format::Table,
        }
    }

    pub fn is_json(self) -> bool {
        self.format() == Format::Json
    }

    pub fn is_wide(self) -> bool {
        self.format() == Format::Wide
    }
}

/// A time in milliseconds since the epoch as `YYYY-MM-DD HH:MM` UTC (`-` for none), for tables.
pub fn utc(ms: Option<i64>) -> String {
    let Some(ms) = ms else { return "-".into() };
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = kobako_image::store::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        out: OutputArgs,
    }

    #[test]
    fn json_flag_and_output_option_agree() {
        let f = |a: &[&str]| T::try_parse_from(a).map(|t| t.out.format());
        assert_eq!(f(&["t"]).unwrap(), Format::Table);
        assert_eq!(f(&["t", "--json"]).unwrap(), Format::Json);
        assert_eq!(f(&["t", "-o", "json"]).unwrap(), Format::Json);
        assert_eq!(f(&["t", "-o", "wide"]).unwrap(), Format::Wide);
        assert_eq!(f(&["t", "--output", "table"]).unwrap(), Format::Table);
        // Two answers to one question is a mistake, and an unknown format is named.
        assert!(f(&["t", "--json", "-o", "wide"]).is_err());
        let e = f(&["t", "-o", "yaml"]).unwrap_err().to_string();
        assert!(e.contains("yaml") && e.contains("wide"), "{e}");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(None), "-");
        assert_eq!(utc(Some(0)), "1970-01-01 00:00");
        // `date -u -d @1796628698` = 2026-12-07 ...; a leap day and the day before 1970 too.
        assert_eq!(utc(Some(1_796_628_698_790)), "2026-12-07 07:31");
        assert_eq!(utc(Some(951_782_400_000)), "2000-02-29 00:00");
        assert_eq!(utc(Some(-60_000)), "1969-12-31 23:59");
    }
}
