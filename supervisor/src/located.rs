//! A problem located in a file: `FILE:LINE[:COLUMN]: what is wrong`. envd-init's service files
//! and the host's build files report their errors with it, so both read the same way and editors
//! can jump to them.

use std::fmt;
use std::path::PathBuf;

/// A problem in a file, located to a line and, when known, a column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The file (as given).
    pub file: PathBuf,
    /// 1-based line (0: the file as a whole).
    pub line: usize,
    /// 1-based column (0: the line as a whole).
    pub column: usize,
    /// What is wrong, in words.
    pub message: String,
}

impl Located {
    /// A problem at `line` of `file` (0: the file as a whole).
    pub fn at(file: impl Into<PathBuf>, line: usize, message: String) -> Self {
        Located {
            file: file.into(),
            line,
            column: 0,
            message,
        }
    }
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match (self.line, self.column) {
            (0, _) => write!(f, "{file}: {}", self.message),
            (line, 0) => write!(f, "{file}:{line}: {}", self.message),
            (line, column) => write!(f, "{file}:{line}:{column}: {}", self.message),
        }
    }
}

impl std::error::Error for Located {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_as_much_of_the_place_as_it_knows() {
        let whole = Located::at("a.toml", 0, "unreadable".into());
        assert_eq!(whole.to_string(), "a.toml: unreadable");
        assert_eq!(
            Located::at("a.toml", 3, "bad".into()).to_string(),
            "a.toml:3: bad"
        );
        let exact = Located {
            column: 7,
            ..Located::at("build.envd", 3, "bad".into())
        };
        assert_eq!(exact.to_string(), "build.envd:3:7: bad");
    }
}
