//! The shared store: PostgreSQL, for several broker replicas. Each replica
//! appends to its own chain (its own head row), so replicas never wait for
//! one another's entries.

use crate::dialect::{Columns, Dialect, Param, Statement, decode_item, encode, offer};
use crate::entry::{Stored, hex, unhex32};
use crate::outbox::{Claim, Item, Op, OutboxFilter, Prior, State};
use crate::{Filter, Store, StoreError};
use postgres::error::SqlState;
use postgres::{Client, NoTls};
use std::collections::{BTreeMap, HashMap};

pub struct PostgresStore {
    client: Client,
    url: String,
    schema: Option<String>,
    /// Chains this session holds (advisory locks), taken again after a reconnect.
    writers: Vec<String>,
    /// The commit's statements, prepared on this connection, by their text:
    /// each is parsed once per connection instead of once per commit (a
    /// round trip to the server each time).
    prepared: HashMap<String, postgres::Statement>,
}

/// More distinct statement texts than commits use (the cache is cleared
/// past it, so an unexpected text cannot grow it without bound).
const MAX_PREPARED: usize = 64;

/// The server's own message and code when it gave one ("db error" alone
/// says nothing). Only the message: its detail may quote a row's values.
fn err(e: postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => StoreError::Failed(format!(
            "{e}: {} (SQLSTATE {})",
            db.message(),
            db.code().code()
        )),
        None => StoreError::Failed(e.to_string()),
    }
}

impl PostgresStore {
    /// Connect to `url` (postgres://...) and create the tables if needed,
    /// in `schema` if given (tests use one schema each).
    pub fn connect(url: &str, schema: Option<&str>) -> Result<Self, StoreError> {
        let client = Self::open(url, schema)?;
        Ok(PostgresStore {
            client,
            url: url.to_owned(),
            schema: schema.map(str::to_owned),
            writers: Vec::new(),
            prepared: HashMap::new(),
        })
    }

    /// A connection whose session is set up: schema chosen, tables made.
    fn open(url: &str, schema: Option<&str>) -> Result<Client, StoreError> {
        let connected = match crate::pg_tls::connect_for(url)? {
            crate::pg_tls::Connect::Plain(url) => Client::connect(&url, NoTls),
            crate::pg_tls::Connect::Tls(url, tls) => Client::connect(&url, tls),
        };
        let mut client = connected.map_err(|e| {
            // The postgres crate's Display omits the cause (a refused certificate, say).
            let cause = std::error::Error::source(&e)
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            StoreError::Failed(format!("cannot connect to PostgreSQL: {e}{cause}"))
        })?;
        // A schema named by the URL (`?options=-csearch_path%3Dname`, as
        // libpq writes it) is made if missing, so replicas of one
        // deployment can share a database with others.
        // (Only the URL's: a role's own default search_path is not a
        // request to make anything.)
        let from_url = match schema {
            Some(_) => None,
            None => schema_in_url(url),
        };
        // A schema the URL names in a form this does not make (quoted,
        // other characters) is left to the server, as before.
        let from_url =
            from_url.filter(|s| s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        if let Some(schema) = schema.or(from_url.as_deref()) {
            if !schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(StoreError::Failed(format!(
                    "schema name {schema:?}: letters, digits and _ only"
                )));
            }
            let make = format!("CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}");
            // Two replicas starting at once may both make it.
            if let Err(e) = client.batch_execute(&make) {
                client.batch_execute(&make).map_err(|_| err(e))?;
            }
        }
        // A store already made to this version is left alone: its DDL
        // would take table locks on every open (an auditor's every call).
        let made: bool = client
            .query_one(
                "SELECT to_regclass('outbox_leased') IS NOT NULL
                    AND to_regclass('audit_entries_chain_unique') IS NOT NULL",
                &[],
            )
            .and_then(|r| r.try_get(0))
            .map_err(err)?;
        if made {
            return Ok(client);
        }
        // Two replicas starting at once may both create the tables.
        let schema = format!(
            "{}\n{}",
            Dialect::Postgres.schema(),
            Dialect::Postgres.outbox_schema()
        );
        if let Err(e) = client.batch_execute(&schema) {
            client.batch_execute(&schema).map_err(|_| err(e))?;
        }
        // An outbox made before its lease columns gets them (empty: anyone's).
        for column in Dialect::Postgres.outbox_added_columns() {
            let add = format!(
                "ALTER TABLE outbox ADD COLUMN IF NOT EXISTS {column} TEXT NOT NULL DEFAULT ''"
            );
            if let Err(e) = client.batch_execute(&add) {
                client.batch_execute(&add).map_err(|_| err(e))?;
            }
        }
        // A column an earlier build of the lease work made, no longer written.
        client
            .batch_execute("ALTER TABLE outbox DROP COLUMN IF EXISTS lease_until")
            .map_err(err)?;
        if let Err(e) = client.batch_execute(Dialect::Postgres.outbox_leases()) {
            client
                .batch_execute(Dialect::Postgres.outbox_leases())
                .map_err(|_| err(e))?;
        }
        if let Err(e) = client.batch_execute(Dialect::Postgres.unique_chain()) {
            tracing::warn!(error = %e, "the log holds a chain position twice; run crossgate audit verify");
            client
                .batch_execute(Dialect::Postgres.plain_chain())
                .map_err(err)?;
        }
        Ok(client)
    }

    /// The connection, made again if the server closed it (a restart, a
    /// failover, an administrator's `pg_terminate_backend`): the call that
    /// saw it die failed; the next one works on a new session.
    fn live(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.is_closed() {
            tracing::warn!("the PostgreSQL connection was closed; connecting again");
            let mut client = Self::open(&self.url, self.schema.as_deref())?;
            // The chains' locks went with the old session.
            for writer in &self.writers {
                take_lock(&mut client, writer)?;
            }
            self.client = client;
            // Statements belong to the session that prepared them.
            self.prepared.clear();
        }
        Ok(&mut self.client)
    }

    /// One commit, through the statements prepared on this connection
    /// (which `live` has checked).
    fn commit_prepared(
        &mut self,
        batch: &[Stored],
        ops: &[Op],
        claims: &[Claim],
    ) -> Result<(), postgres::Error> {
        let PostgresStore {
            client, prepared, ..
        } = self;
        let mut tx = client.transaction()?;
        for claim in claims {
            run(&mut tx, prepared, Dialect::Postgres.claim(claim))?;
        }
        for op in ops {
            for statement in Dialect::Postgres.outbox_op(op) {
                run(&mut tx, prepared, statement)?;
            }
        }
        let insert = prepare(&mut tx, prepared, Dialect::Postgres.insert())?;
        for s in batch {
            let params = encode(s);
            tx.execute(&insert, &args(&params))?;
        }
        if let Some(last) = batch.last() {
            let move_head = prepare(&mut tx, prepared, Dialect::Postgres.move_head())?;
            tx.execute(
                &move_head,
                &[
                    &last.writer,
                    &(last.sequence as i64),
                    &hex(&last.entry_hash),
                ],
            )?;
        }
        tx.commit()
    }

    /// Direct access, for tests that tamper with the table.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl Columns for postgres::Row {
    fn text(&self, name: &str) -> Result<String, StoreError> {
        self.try_get(name).map_err(err)
    }
    fn int(&self, name: &str) -> Result<i64, StoreError> {
        self.try_get(name).map_err(err)
    }
    fn bytes(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        self.try_get(name).map_err(err)
    }
}

/// The schema a PostgreSQL URL names in its `options`
/// (`options=-csearch_path%3Dname` or `-c search_path=name`), if any.
fn schema_in_url(url: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    let options = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("options="))?;
    let options = crate::pg_tls::percent_decoded(options);
    let value = options.split("search_path=").nth(1)?;
    let first = value
        .split([',', ' ', '\t'])
        .next()
        .unwrap_or("")
        .trim_matches('"');
    (!first.is_empty() && first != "$user" && first != "public").then(|| first.to_owned())
}

/// Hold `writer`'s chain for this session (a session-level advisory lock,
/// keyed by the log's schema and the writer id).
fn take_lock(client: &mut Client, writer: &str) -> Result<(), StoreError> {
    let row = client
        .query_one(
            "SELECT pg_try_advisory_lock(hashtextextended('crossgate-audit-writer:' || current_schema() || ':' || $1, 0))",
            &[&writer],
        )
        .map_err(err)?;
    if row.try_get::<_, bool>(0).map_err(err)? {
        Ok(())
    } else {
        Err(StoreError::WriterInUse(writer.to_owned()))
    }
}

type Arg<'a> = &'a (dyn postgres::types::ToSql + Sync);

fn args<'a>(params: &'a [Param<'_>]) -> Vec<Arg<'a>> {
    params
        .iter()
        .map(|p| match p {
            Param::Text(t) => t as Arg<'_>,
            Param::Int(i) => i as Arg<'_>,
            Param::Bytes(b) => b as Arg<'_>,
        })
        .collect()
}

fn run(
    tx: &mut postgres::Transaction<'_>,
    prepared: &mut HashMap<String, postgres::Statement>,
    (sql, params): Statement<'_>,
) -> Result<(), postgres::Error> {
    let statement = prepare(tx, prepared, &sql)?;
    tx.execute(&statement, &args(&params)).map(|_| ())
}

/// `sql` prepared on this connection: from `prepared`, or now and kept there.
fn prepare(
    tx: &mut postgres::Transaction<'_>,
    prepared: &mut HashMap<String, postgres::Statement>,
    sql: &str,
) -> Result<postgres::Statement, postgres::Error> {
    if let Some(statement) = prepared.get(sql) {
        return Ok(statement.clone());
    }
    if prepared.len() >= MAX_PREPARED {
        prepared.clear();
    }
    let statement = tx.prepare(sql)?;
    prepared.insert(sql.to_owned(), statement.clone());
    Ok(statement)
}

impl Store for PostgresStore {
    fn lock_writer(&mut self, writer: &str) -> Result<(), StoreError> {
        take_lock(self.live()?, writer)?;
        self.writers.push(writer.to_owned());
        Ok(())
    }

    fn head(&mut self, writer: &str) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        let row = self
            .live()?
            .query_opt(
                "SELECT sequence, entry_hash FROM audit_heads WHERE writer = $1",
                &[&writer],
            )
            .map_err(err)?;
        row.map(|r| {
            unhex32(&r.get::<_, String>(1))
                .map(|h| (r.get::<_, i64>(0) as u64, h))
                .ok_or_else(|| StoreError::Failed("a chain head is damaged".into()))
        })
        .transpose()
    }

    fn heads(&mut self) -> Result<BTreeMap<String, (u64, [u8; 32])>, StoreError> {
        let rows = self
            .live()?
            .query("SELECT writer, sequence, entry_hash FROM audit_heads", &[])
            .map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| {
                let h = unhex32(&r.get::<_, String>(2)).unwrap_or([0xff; 32]);
                (r.get::<_, String>(0), (r.get::<_, i64>(1) as u64, h))
            })
            .collect())
    }

    fn commit(&mut self, batch: &[Stored], ops: &[Op], claims: &[Claim]) -> Result<(), StoreError> {
        if batch.is_empty() && ops.is_empty() && claims.is_empty() {
            return Ok(());
        }
        self.live()?;
        match self.commit_prepared(batch, ops, claims) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.prepared.clear();
                if e.code() != Some(&SqlState::INVALID_SQL_STATEMENT_NAME) {
                    return Err(err(e));
                }
                // The server dropped the statements while the connection
                // stayed open (`DEALLOCATE`, a pooler that switched its
                // server connection). Nothing of the transaction was
                // committed: prepare them again and commit once more.
                tracing::warn!(
                    "PostgreSQL no longer knows the prepared statements; preparing them again"
                );
                self.live()?;
                self.commit_prepared(batch, ops, claims).map_err(err)
            }
        }
    }

    fn find_claim(&mut self, provider: &str, key: &str) -> Result<Option<Prior>, StoreError> {
        let row = self
            .live()?
            .query_opt(Dialect::Postgres.find_claim(), &[&provider, &key])
            .map_err(err)?;
        row.map(|r| {
            Ok(Prior {
                request_id: r.try_get(0).map_err(err)?,
                record_digest: r.try_get(1).map_err(err)?,
            })
        })
        .transpose()
    }

    fn count_outbox(&mut self, state: State) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = self
            .live()?
            .query(
                Dialect::Postgres.count_outbox().as_str(),
                &[&state.as_str()],
            )
            .map_err(err)?;
        rows.iter()
            .map(|row| {
                let receiver: String = row.try_get(0).map_err(err)?;
                let n: i64 = row.try_get(1).map_err(err)?;
                Ok((receiver, n.max(0) as u64))
            })
            .collect()
    }

    fn scan_outbox(
        &mut self,
        filter: &OutboxFilter,
        visit: &mut dyn FnMut(Item) -> bool,
    ) -> Result<(), StoreError> {
        // A lane that leases claims its items (skipping rows another
        // replica is claiming); anything else reads.
        let (sql, args) = match (&filter.lease, &filter.receiver) {
            (Some(lease), Some(receiver)) if filter.state == Some(crate::outbox::State::Queued) => {
                Dialect::Postgres.claim_outbox(receiver, lease, filter.limit)
            }
            _ => Dialect::Postgres.select_outbox(filter),
        };
        let params: Vec<Arg<'_>> = args.iter().map(|a| a as Arg<'_>).collect();
        let mut rows = self.live()?.query_raw(sql.as_str(), params).map_err(err)?;
        while let Some(row) =
            postgres::fallible_iterator::FallibleIterator::next(&mut rows).map_err(err)?
        {
            if !visit(decode_item(&row)?) {
                break;
            }
        }
        Ok(())
    }

    fn scan_rows(
        &mut self,
        filter: &Filter,
        visit: &mut dyn FnMut(Result<Stored, StoreError>) -> bool,
    ) -> Result<(), StoreError> {
        let (sql, args) = Dialect::Postgres.select(filter);
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> = args
            .iter()
            .map(|a| a as &(dyn postgres::types::ToSql + Sync))
            .collect();
        let mut rows = self.live()?.query_raw(sql.as_str(), params).map_err(err)?;
        while let Some(row) =
            postgres::fallible_iterator::FallibleIterator::next(&mut rows).map_err(err)?
        {
            if !offer(&row, visit)? {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod url_tests {
    use super::schema_in_url;

    #[test]
    fn a_schema_is_taken_from_the_urls_options_only() {
        let base = "postgres://postgres@127.0.0.1:5432/test";
        assert_eq!(
            schema_in_url(&format!("{base}?options=-csearch_path%3Dreplicas_1")),
            Some("replicas_1".into())
        );
        assert_eq!(
            schema_in_url(&format!(
                "{base}?sslmode=disable&options=-c%20search_path%3Dcg%2Cpublic"
            )),
            Some("cg".into())
        );
        assert_eq!(schema_in_url(base), None);
        assert_eq!(
            schema_in_url(&format!("{base}?options=-csearch_path%3Dpublic")),
            None
        );
        assert_eq!(
            schema_in_url(&format!("{base}?options=-cstatement_timeout%3D5s")),
            None
        );
        assert_eq!(schema_in_url(&format!("{base}?options=%")), None);
    }
}
