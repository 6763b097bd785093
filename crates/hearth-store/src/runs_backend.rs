//! The run primitives ([`crate::backend::RunBackend`]) for both backends,
//! written once: the statements are shared (`runs_sql`), and what differs
//! is given to the macro: the backend, its database, and its row-lock
//! clauses (PostgreSQL locks the rows it decides on; SQLite's single write
//! lock already serializes every writer). Each backend module provides
//! `fence`, `insert_event`, `begin()` and `reads()`.

/// Implement `RunBackend` for `$backend` over database `$db`.
macro_rules! impl_run_backend {
    (
        $backend:ty,
        $db:ty,
        lock_row = $lock_row:literal,
        claim_lock = $claim_lock:literal,
        size = $size:literal
    ) => {
        impl $crate::backend::RunBackend for $backend {
            async fn put_blob(&self, digest: &str, data: &[u8], now: u64) -> Result<()> {
                sqlx::query(runs_sql::PUT_BLOB)
                    .bind(digest)
                    .bind(data.len() as i64)
                    .bind(data)
                    .bind(now as i64)
                    .execute(self.writes())
                    .await
                    .map_err(query("storing a blob"))?;
                Ok(())
            }

            async fn put_chunked_blob(
                &self,
                digest: &str,
                size: u64,
                chunks: &str,
                now: u64,
            ) -> Result<()> {
                sqlx::query(runs_sql::PUT_CHUNKED_BLOB)
                    .bind(digest)
                    .bind(size as i64)
                    .bind(&[][..] as &[u8])
                    .bind(chunks)
                    .bind(now as i64)
                    .execute(self.writes())
                    .await
                    .map_err(query("storing a chunked blob"))?;
                Ok(())
            }

            async fn blob(&self, digest: &str) -> Result<Option<(Vec<u8>, Option<String>)>> {
                sqlx::query_as(runs_sql::BLOB)
                    .bind(digest)
                    .fetch_optional(self.reads())
                    .await
                    .map_err(query("reading a blob"))
            }

            async fn insert_run(
                &self,
                new: &NewRun,
                steps: &[StepRow],
                event: &NewEvent,
                now: u64,
            ) -> Result<Event> {
                let mut tx = self.begin().await?;
                let inserted = sqlx::query(runs_sql::INSERT_RUN)
                    .bind(&new.id)
                    .bind(&new.name)
                    .bind(&new.program)
                    .bind(new.spec.to_string())
                    .bind(new.input.to_string())
                    .bind(new.parent.as_ref().map(|(id, _)| id.clone()))
                    .bind(new.parent.as_ref().map(|(_, seq)| *seq as i64))
                    .bind(new.deadline_ms.map(|t| t as i64))
                    .bind(now as i64)
                    .execute(&mut *tx)
                    .await;
                match inserted {
                    Ok(_) => {}
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                        return Err(StoreError::Duplicate(new.id.clone()))
                    }
                    Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
                        return Err(StoreError::Invalid(format!(
                            "run {} names program {} which is not in the blob store",
                            new.id, new.program
                        )))
                    }
                    Err(e) => return Err(query("inserting a run")(e)),
                }
                for step in steps {
                    put_step_row(&mut tx, &new.id, step, now).await?;
                }
                let event = insert_event(&mut tx, None, Some(&new.id), None, event, now).await?;
                tx.commit().await.map_err(query("commit"))?;
                Ok(event)
            }

            async fn run(&self, id: &str) -> Result<Option<RunRecord>> {
                let row = sqlx::query(runs_sql::RUN)
                    .bind(id)
                    .fetch_optional(self.reads())
                    .await
                    .map_err(query("reading a run"))?;
                row.as_ref().map(runs_sql::run).transpose()
            }

            async fn list_runs(&self, filter: &RunFilter, limit: u32) -> Result<Vec<RunRecord>> {
                let found = runs_sql::list_runs::<$db>(filter, limit)
                    .build()
                    .fetch_all(self.reads())
                    .await
                    .map_err(query("listing runs"))?;
                found.iter().map(runs_sql::run).collect()
            }

            async fn update_run(
                &self,
                id: &str,
                expected: RunState,
                writer: RunWriter<'_>,
                change: &RunChange,
                event: &NewEvent,
                now: u64,
            ) -> Result<RunUpdated> {
                let mut tx = self.begin().await?;
                let node = match writer {
                    RunWriter::Owner(lease) => {
                        if let Some(refusal) = fence(&mut tx, lease).await? {
                            return Ok(RunUpdated::Refused(RunRefusal::Fenced(refusal)));
                        }
                        Some((lease.node_id.as_str(), lease.epoch))
                    }
                    RunWriter::Unowned => None,
                };
                let done = runs_sql::update_run::<$db>(id, expected, node, change, now)
                    .build()
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(query("updating a run"))?;
                let Some(row) = done else {
                    let current = sqlx::query(runs_sql::RUN)
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(query("reading a run"))?;
                    let refusal = match current.as_ref().map(runs_sql::run).transpose()? {
                        None => RunRefusal::NotFound,
                        Some(run) => {
                            match owner_refusal(writer, (run.node_id.as_deref(), run.node_epoch)) {
                                Some(reason) if run.state == expected => {
                                    RunRefusal::NotOwner(reason)
                                }
                                _ => RunRefusal::StateMoved,
                            }
                        }
                    };
                    return Ok(RunUpdated::Refused(refusal));
                };
                let run = runs_sql::run(&row)?;
                let by = node.map(|(n, _)| n);
                let events = vec![
                    insert_event(&mut tx, run.sandbox_id.as_deref(), Some(id), by, event, now)
                        .await?,
                ];
                if run.state.is_final() {
                    // A parent waiting on this child is due now.
                    if let Some(parent) = &run.parent_id {
                        wake_waiter(&mut tx, parent, id, now).await?;
                    }
                }
                tx.commit().await.map_err(query("commit"))?;
                Ok(RunUpdated::Done(Box::new(run), events))
            }

            async fn claim_runs(
                &self,
                lease: &Lease,
                limit: u32,
                only: Option<&str>,
                now: u64,
            ) -> Result<std::result::Result<Vec<(RunRecord, Event)>, String>> {
                let mut tx = self.begin().await?;
                if let Some(refusal) = fence(&mut tx, lease).await? {
                    return Ok(Err(refusal));
                }
                // Constants only: the statement and the backend's lock clause.
                let select = format!("{}{}", runs_sql::CLAIMABLE, $claim_lock);
                let found = sqlx::query(sqlx::AssertSqlSafe(select))
                    .bind(now as i64)
                    .bind(i64::from(limit))
                    .bind(only)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(query("finding runs to claim"))?;
                let candidates: Vec<RunRecord> =
                    found.iter().map(runs_sql::run).collect::<Result<_>>()?;
                let mut claimed = Vec::with_capacity(candidates.len());
                for before in candidates {
                    let row = sqlx::query(runs_sql::CLAIM)
                        .bind(&before.id)
                        .bind(&lease.node_id)
                        .bind(lease.epoch)
                        .bind(now as i64)
                        .bind(before.state.as_str())
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(query("claiming a run"))?;
                    let Some(row) = row else { continue };
                    let run = runs_sql::run(&row)?;
                    let event = insert_event(
                        &mut tx,
                        None,
                        Some(&run.id),
                        Some(&lease.node_id),
                        &claim_event(&before, lease),
                        now,
                    )
                    .await?;
                    claimed.push((run, event));
                }
                tx.commit().await.map_err(query("commit"))?;
                Ok(Ok(claimed))
            }

            async fn steps(&self, run_id: &str) -> Result<Vec<StepRecord>> {
                let found = sqlx::query(runs_sql::STEPS)
                    .bind(run_id)
                    .fetch_all(self.reads())
                    .await
                    .map_err(query("reading a journal"))?;
                found
                    .iter()
                    .map(|row| {
                        let data: Option<Vec<u8>> =
                            row.try_get("result_data")
                                .map_err(|e| StoreError::Corrupt {
                                    what: "step result",
                                    detail: e.to_string(),
                                })?;
                        runs_sql::step(row, data)
                    })
                    .collect()
            }

            async fn insert_signal(
                &self,
                run_id: &str,
                name: &str,
                data: &serde_json::Value,
                now: u64,
            ) -> Result<Option<std::result::Result<(Signal, Event), RunState>>> {
                let mut tx = self.begin().await?;
                let select = format!("{}{}", runs_sql::RUN, $lock_row);
                let row = sqlx::query(sqlx::AssertSqlSafe(select))
                    .bind(run_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(query("reading a run"))?;
                let Some(run) = row.as_ref().map(runs_sql::run).transpose()? else {
                    return Ok(None);
                };
                if run.state.is_final() {
                    return Ok(Some(Err(run.state)));
                }
                let row = sqlx::query(runs_sql::INSERT_SIGNAL)
                    .bind(run_id)
                    .bind(name)
                    .bind(data.to_string())
                    .bind(now as i64)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(query("recording a signal"))?;
                let signal = runs_sql::signal(&row)?;
                let payload = EventPayload::RunSignalled(crate::event::RunSignalled {
                    name: name.to_string(),
                    signal_id: signal.id,
                });
                let event = insert_event(
                    &mut tx,
                    None,
                    Some(run_id),
                    None,
                    &NewEvent::of(&payload),
                    now,
                )
                .await?;
                wake_waiter(&mut tx, run_id, name, now).await?;
                tx.commit().await.map_err(query("commit"))?;
                Ok(Some(Ok((signal, event))))
            }

            async fn signals(&self, run_id: &str, name: &str) -> Result<Vec<Signal>> {
                let found = sqlx::query(runs_sql::SIGNALS)
                    .bind(run_id)
                    .bind(name)
                    .fetch_all(self.reads())
                    .await
                    .map_err(query("reading signals"))?;
                found.iter().map(runs_sql::signal).collect()
            }

            async fn resolve_step(
                &self,
                run_id: &str,
                step: &StepRow,
                step_event: &NewEvent,
                run_event: &NewEvent,
                now: u64,
            ) -> Result<std::result::Result<Vec<Event>, RunRefusal>> {
                let mut tx = self.begin().await?;
                let select = format!("SELECT state, node_id FROM runs WHERE id = $1{}", $lock_row);
                let current: Option<(String, Option<String>)> =
                    sqlx::query_as(sqlx::AssertSqlSafe(select))
                        .bind(run_id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(query("reading a run"))?;
                match current {
                    None => return Ok(Err(RunRefusal::NotFound)),
                    Some((state, None)) if state == RunState::NeedsAttention.as_str() => {}
                    Some(_) => return Ok(Err(RunRefusal::StateMoved)),
                }
                put_step_row(&mut tx, run_id, step, now).await?;
                sqlx::query(
                    "UPDATE runs SET state = 'pending', wake_ms = NULL, waiting_for = NULL, \
                     updated_ms = $2 WHERE id = $1",
                )
                .bind(run_id)
                .bind(now as i64)
                .execute(&mut *tx)
                .await
                .map_err(query("updating a run"))?;
                let events = vec![
                    insert_event(&mut tx, None, Some(run_id), None, step_event, now).await?,
                    insert_event(&mut tx, None, Some(run_id), None, run_event, now).await?,
                ];
                tx.commit().await.map_err(query("commit"))?;
                Ok(Ok(events))
            }

            async fn wake(&self, run_id: &str, on: &str, now: u64) -> Result<bool> {
                let mut tx = self.begin().await?;
                let woken = wake_waiter(&mut tx, run_id, on, now).await?.is_some();
                tx.commit().await.map_err(query("commit"))?;
                Ok(woken)
            }

            async fn size_bytes(&self) -> Result<u64> {
                let (size,): (i64,) = sqlx::query_as($size)
                    .fetch_one(self.reads())
                    .await
                    .map_err(query("measuring the database"))?;
                Ok(size.max(0) as u64)
            }

            async fn run_events(&self, run_id: &str, after: i64, limit: u32) -> Result<Vec<Event>> {
                let found = runs_sql::run_events::<$db>(run_id, after, limit)
                    .build()
                    .fetch_all(self.reads())
                    .await
                    .map_err(query("reading a run's events"))?;
                found.iter().map(rows::event).collect()
            }
        }

        /// Write (insert or replace) one journal row, and first the blob
        /// holding its result when that is too large for the row.
        async fn put_step_row(
            conn: &mut <$db as sqlx::Database>::Connection,
            run_id: &str,
            step: &StepRow,
            now: u64,
        ) -> Result<()> {
            put_step_blob(&mut *conn, step, now).await?;
            runs_sql::bind_step_row!(sqlx::query(runs_sql::PUT_STEP), run_id, step, now)
                .execute(&mut *conn)
                .await
                .map_err(query("writing a step"))?;
            Ok(())
        }

        /// Store the blob holding `step`'s result, when it is too large
        /// for the row (before the row that names it).
        pub(crate) async fn put_step_blob(
            conn: &mut <$db as sqlx::Database>::Connection,
            step: &StepRow,
            now: u64,
        ) -> Result<()> {
            if let Some((digest, data)) = &step.result_blob {
                sqlx::query(runs_sql::PUT_BLOB)
                    .bind(digest)
                    .bind(data.len() as i64)
                    .bind(data.as_slice())
                    .bind(now as i64)
                    .execute(&mut *conn)
                    .await
                    .map_err(query("storing a step result"))?;
            }
            Ok(())
        }

        /// Wake run `run_id` if it is waiting on `on` (a signal's name or
        /// a child's id); returns it when it did.
        async fn wake_waiter(
            conn: &mut <$db as sqlx::Database>::Connection,
            run_id: &str,
            on: &str,
            now: u64,
        ) -> Result<Option<RunRecord>> {
            let row = sqlx::query(runs_sql::RUN)
                .bind(run_id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(query("reading a run"))?;
            let Some(run) = row.as_ref().map(runs_sql::run).transpose()? else {
                return Ok(None);
            };
            if run.state != RunState::Waiting || !runs_sql::waits_on(run.waiting_for.as_ref(), on) {
                return Ok(None);
            }
            sqlx::query(runs_sql::WAKE)
                .bind(run_id)
                .bind(now as i64)
                .execute(&mut *conn)
                .await
                .map_err(query("waking a run"))?;
            Ok(Some(run))
        }
    };
}

pub(crate) use impl_run_backend;
