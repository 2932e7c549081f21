//! Reading the rows of a binary `COPY (…) TO STDOUT (FORMAT binary)` of
//! text columns, as the server sends them: in chunks whose bounds need not
//! fall between rows. The deletion step reads a table's keys this way: a
//! about half the time the same rows took as query results (0.15 s to
//! 0.08 s for 200,000 keys, see BENCHMARKS.md), and binary, so no value is
//! escaped.
//!
//! The format (PostgreSQL's `COPY` documentation): an 11-byte signature,
//! a 32-bit flags field and a 32-bit header extension length (and that
//! many bytes); then per row a 16-bit field count and per field a 32-bit
//! length and that many bytes (a text value is its UTF-8); a field count
//! of -1 ends the data.

use futures_util::TryStreamExt;
use sqlx::PgPool;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, Postgres};

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Runs `copy` (a `COPY (…) TO STDOUT (FORMAT binary)` of `columns` text
/// columns) and hands each row to `each`.
pub(in crate::store) async fn read_rows(
    pool: &PgPool,
    copy: &str,
    columns: usize,
    mut each: impl FnMut(&Vec<String>),
) -> Result<(), sqlx::Error> {
    let mut session = CopySession(Some(pool.acquire().await?));
    let mut rows = CopyRows::new(columns);
    let mut row = Vec::with_capacity(columns);
    {
        let mut chunks = session.conn().copy_out_raw(copy).await?;
        while let Some(chunk) = chunks.try_next().await? {
            rows.feed(&chunk);
            while rows.next_row(&mut row).map_err(sqlx::Error::Protocol)? {
                each(&row);
            }
        }
    }
    rows.finish().map_err(sqlx::Error::Protocol)?;
    session.done();
    Ok(())
}

/// The connection of one COPY read, closed instead of returned to the pool
/// unless the read ran to its end. sqlx does not count a COPY's reply as
/// pending: a read cut short (a shutdown dropping it, a malformed row)
/// would go back to the pool mid-COPY, its release check would stop at the
/// COPY's own end, one reply early, and the next statement on it would
/// take that stale reply for its own (an empty answer to a lookup).
struct CopySession(Option<PoolConnection<Postgres>>);

impl CopySession {
    fn conn(&mut self) -> &mut PgConnection {
        self.0
            .as_mut()
            .expect("the session holds its connection until done")
    }

    /// The read ran to its end: the connection is ready for the pool.
    fn done(mut self) {
        drop(self.0.take());
    }
}

impl Drop for CopySession {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            // Out of the pool, and dropped: its socket closes.
            drop(conn.detach());
        }
    }
}

/// Rows of `columns` text fields, decoded from the chunks fed to it.
#[derive(Debug)]
struct CopyRows {
    columns: usize,
    buffer: Vec<u8>,
    /// Where the next unread byte of `buffer` is.
    at: usize,
    header_read: bool,
    ended: bool,
}

impl CopyRows {
    fn new(columns: usize) -> Self {
        Self {
            columns,
            buffer: Vec::new(),
            at: 0,
            header_read: false,
            ended: false,
        }
    }

    /// Adds the next chunk of the stream.
    fn feed(&mut self, chunk: &[u8]) {
        // Drop what was read, so the buffer holds one row at most.
        self.buffer.drain(..self.at);
        self.at = 0;
        self.buffer.extend_from_slice(chunk);
    }

    /// The next complete row into `row`: `Ok(true)` when there was one,
    /// `Ok(false)` when more bytes are needed (or the data has ended).
    fn next_row(&mut self, row: &mut Vec<String>) -> Result<bool, String> {
        if !self.header_read {
            let Some(extension) = self.peek_u32(SIGNATURE.len() + 4) else {
                return Ok(false);
            };
            if !self.buffer[self.at..].starts_with(SIGNATURE) {
                return Err("the COPY data does not start with the binary signature".into());
            }
            let header = SIGNATURE.len() + 8 + extension as usize;
            if self.buffer.len() - self.at < header {
                return Ok(false);
            }
            self.at += header;
            self.header_read = true;
        }
        if self.ended {
            return Ok(false);
        }
        let Some(count) = self.peek_u16(0) else {
            return Ok(false);
        };
        if count == 0xffff {
            self.at += 2;
            self.ended = true;
            return Ok(false);
        }
        if usize::from(count) != self.columns {
            return Err(format!(
                "a COPY row has {count} fields, expected {}",
                self.columns
            ));
        }
        // Whole row first: nothing is taken from a row that is cut short.
        let mut offset = 2;
        let mut bounds = Vec::with_capacity(self.columns);
        for _ in 0..self.columns {
            let Some(len) = self.peek_u32(offset) else {
                return Ok(false);
            };
            if len == u32::MAX {
                return Err("a COPY row holds a NULL key".into());
            }
            let start = offset + 4;
            offset = start + len as usize;
            if self.buffer.len() - self.at < offset {
                return Ok(false);
            }
            bounds.push(start..offset);
        }
        row.clear();
        for field in bounds {
            let bytes = &self.buffer[self.at + field.start..self.at + field.end];
            let text =
                std::str::from_utf8(bytes).map_err(|_| "a COPY field is not UTF-8".to_owned())?;
            row.push(text.to_owned());
        }
        self.at += offset;
        Ok(true)
    }

    /// After the stream's last chunk: an error unless the data ended where
    /// the format says it does.
    fn finish(&self) -> Result<(), String> {
        if self.ended && self.at == self.buffer.len() {
            Ok(())
        } else {
            Err("the COPY data ended early".into())
        }
    }

    fn peek_u16(&self, offset: usize) -> Option<u16> {
        let start = self.at + offset;
        let bytes = self.buffer.get(start..start + 2)?;
        Some(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn peek_u32(&self, offset: usize) -> Option<u32> {
        let start = self.at + offset;
        let bytes = self.buffer.get(start..start + 4)?;
        Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[sqlx::test(migrations = false)]
    async fn a_copy_read_cut_short_never_hands_its_session_to_the_next_statement(pool: PgPool) {
        // Arrange: a pool of one connection, and a read far larger than
        // the socket's buffers, given up on at its first row.
        let one = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_with((*pool.connect_options()).clone())
            .await
            .unwrap();
        let (first_row, cut) = tokio::sync::oneshot::channel::<()>();
        let mut first_row = Some(first_row);
        let copy =
            "COPY (SELECT g::text FROM generate_series(1, 5000000) g) TO STDOUT (FORMAT binary)";

        // Act
        tokio::select! {
            read = read_rows(&one, copy, 1, |_| {
                if let Some(signal) = first_row.take() {
                    let _ = signal.send(());
                }
            }) => panic!("the read was to be cut short, it ended: {read:?}"),
            _ = cut => {}
        }

        // Assert: the next statements on the pool get their own answers.
        for n in [3_i64, 5] {
            let count: i64 = sqlx::query_scalar("SELECT count(*) FROM generate_series(1, $1)")
                .bind(n)
                .fetch_one(&one)
                .await
                .unwrap();
            assert_eq!(count, n);
        }
    }

    /// A binary COPY stream of `rows`, as the server writes it.
    fn stream(rows: &[&[&str]]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&3u32.to_be_bytes());
        out.extend_from_slice(b"ext");
        for row in rows {
            out.extend_from_slice(&(row.len() as u16).to_be_bytes());
            for field in *row {
                out.extend_from_slice(&(field.len() as u32).to_be_bytes());
                out.extend_from_slice(field.as_bytes());
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    fn read_all(chunks: &[&[u8]], columns: usize) -> Result<Vec<Vec<String>>, String> {
        let mut rows = CopyRows::new(columns);
        let mut out = Vec::new();
        let mut row = Vec::new();
        for chunk in chunks {
            rows.feed(chunk);
            while rows.next_row(&mut row)? {
                out.push(row.clone());
            }
        }
        rows.finish()?;
        Ok(out)
    }

    #[test]
    fn rows_are_read_whatever_the_chunk_bounds() {
        let keys: &[&[&str]] = &[
            &["1", "eu"],
            &["tab\there", "new\nline"],
            &["back\\slash", ""],
            &["ünïcødé ✓", "\u{0}"],
        ];
        let data = stream(keys);
        let expected: Vec<Vec<String>> = keys
            .iter()
            .map(|row| row.iter().map(|f| (*f).to_owned()).collect())
            .collect();
        assert_eq!(read_all(&[&data], 2).unwrap(), expected);
        for cut in 0..=data.len() {
            let (a, b) = data.split_at(cut);
            assert_eq!(read_all(&[a, b], 2).unwrap(), expected, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(read_all(&bytes, 2).unwrap(), expected, "a byte at a time");
    }

    #[test]
    fn an_empty_table_is_no_rows() {
        assert_eq!(
            read_all(&[&stream(&[])], 1).unwrap(),
            Vec::<Vec<String>>::new()
        );
    }

    #[test]
    fn a_stream_cut_short_or_malformed_is_an_error() {
        let data = stream(&[&["1"], &["2"]]);
        let cut = &data[..data.len() - 3];
        assert_eq!(
            read_all(&[cut], 1).unwrap_err(),
            "the COPY data ended early"
        );
        assert!(
            read_all(&[&data], 2)
                .unwrap_err()
                .contains("has 1 fields, expected 2")
        );
        assert!(
            read_all(&[b"COPY 1\n\xff\r\n\0\0\0\0\0\0\0\0\0"], 1)
                .unwrap_err()
                .contains("signature")
        );
        let mut null = stream(&[]);
        null.truncate(null.len() - 2);
        null.extend_from_slice(&1u16.to_be_bytes());
        null.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            read_all(&[&null], 1).unwrap_err(),
            "a COPY row holds a NULL key"
        );
        let mut latin = stream(&[]);
        latin.truncate(latin.len() - 2);
        latin.extend_from_slice(&1u16.to_be_bytes());
        latin.extend_from_slice(&1u32.to_be_bytes());
        latin.push(0xe9);
        assert_eq!(
            read_all(&[&latin], 1).unwrap_err(),
            "a COPY field is not UTF-8"
        );
    }
}
