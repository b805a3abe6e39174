//! The scheme calls: each translates a request on a path or handle into
//! core calls and the core's answer into bytes or an errno.

use super::*;

impl SchemeSync for PddgpuScheme {
    fn scheme_root(&mut self) -> Result<usize> {
        Ok(ROOT_ID)
    }

    fn openat(
        &mut self,
        dir: usize,
        path: &str,
        flags: usize,
        _fcntl_flags: u32,
        ctx: &CallerCtx,
    ) -> Result<OpenResult> {
        // Even a refused open may count in the statistics.
        self.state_changed();
        // Paths are relative to the root, or to a directory handle.
        let full;
        let path = if dir == ROOT_ID {
            path
        } else {
            match &self.handle(dir)?.kind {
                Kind::Dir(d) if d.path().is_empty() => path,
                Kind::Dir(d) => {
                    full = format!("{}/{}", d.path(), path.trim_start_matches('/'));
                    &full
                }
                _ => return Err(err(ENOTDIR)),
            }
        };
        let node = path::parse(path).inspect_err(|e| {
            self.log_refusal(
                ctx,
                &format!("open {}", logline::excerpt(path)),
                e.errno,
                &e.reason,
            );
        });
        let node = node.map_err(|e| err(e.errno))?;
        // An open relative to a handle acts for that handle's owner (see
        // `crate::callers`); one relative to the root, for the caller.
        let owner = if dir == ROOT_ID {
            self.caller_owner(ctx)
        } else {
            let owner = self.handle(dir)?.owner;
            self.callers.learn_pid(owner, ctx.pid);
            owner
        };
        match self.open_node(node, flags, owner, ctx) {
            Ok(handle) => {
                self.callers.add_handle(handle.owner);
                let number = self.handles.insert(handle);
                Ok(OpenResult::ThisScheme {
                    number,
                    flags: NewFdFlags::POSITIONED,
                })
            }
            Err((errno, reason)) => {
                if self.callers.drop_if_idle(owner) {
                    self.end_owner(owner);
                }
                self.log_refusal(
                    ctx,
                    &format!("open {}", logline::excerpt(path)),
                    errno,
                    &reason,
                );
                Err(err(errno))
            }
        }
    }

    fn read(
        &mut self,
        id: usize,
        buf: &mut [u8],
        offset: u64,
        _fcntl_flags: u32,
        ctx: &CallerCtx,
    ) -> Result<usize> {
        let h = self.readable(id)?;
        let owner = h.owner;
        match &h.kind {
            Kind::Dir(_) => Err(err(EISDIR)),
            Kind::Control => Err(err(EBADF)),
            Kind::File { .. } | Kind::Config { .. } => {
                // A read from the start takes a fresh snapshot (as does the
                // first read); later reads continue the same one, so a
                // reader sees consistent text.
                let has = self.handle_mut(id)?.kind.snapshot_mut().ok_or(err(EBADF))?;
                if offset == 0 || has.bytes.is_none() {
                    self.take_snapshot(id, ctx)?;
                }
                let snapshot = self.handle_mut(id)?.kind.snapshot_mut().ok_or(err(EBADF))?;
                let bytes = snapshot.bytes.as_deref().unwrap_or_default();
                Ok(copy_at(bytes, offset, buf))
            }
            Kind::Bo { id: bo, size, .. } => {
                if offset >= *size {
                    return Ok(0);
                }
                let n = buf.len().min((*size - offset) as usize);
                self.driver
                    .bo_read(owner, *bo, offset, &mut buf[..n])
                    .map_err(|e| err(driver_errno(&e)))
            }
        }
    }

    fn write(
        &mut self,
        id: usize,
        buf: &[u8],
        offset: u64,
        _fcntl_flags: u32,
        ctx: &CallerCtx,
    ) -> Result<usize> {
        self.state_changed();
        let h = self.writable(id)?;
        let owner = h.owner;
        match &h.kind {
            Kind::Dir(_) => Err(err(EISDIR)),
            Kind::File { .. } => Err(err(EBADF)),
            Kind::Control => {
                let Ok(text) = std::str::from_utf8(buf) else {
                    self.log_refusal(ctx, "write control", EINVAL, "not UTF-8");
                    return Err(err(EINVAL));
                };
                self.control(text.trim(), ctx)?;
                Ok(buf.len())
            }
            Kind::Config { name, .. } => {
                let name = name.clone();
                let Ok(text) = std::str::from_utf8(buf) else {
                    self.log_refusal(ctx, &format!("write config/{name}"), EINVAL, "not UTF-8");
                    return Err(err(EINVAL));
                };
                match self.driver.tunables().set(&name, text.trim()) {
                    Ok(_) => {
                        let (pid, value) = (display_pid(ctx.pid), logline::excerpt(text.trim()));
                        logline::defer(Some(ctx.uid), log::Level::Info, move || {
                            format!("pid {pid}: config/{name} = {value}")
                        });
                        Ok(buf.len())
                    }
                    Err(e) => {
                        self.log_refusal(
                            ctx,
                            &format!("write config/{name}"),
                            EINVAL,
                            &format!("{e}"),
                        );
                        Err(err(EINVAL))
                    }
                }
            }
            Kind::Bo { id: bo, size, .. } => {
                if buf.is_empty() {
                    return Ok(0);
                }
                if offset >= *size {
                    return Err(err(syscall::error::EFBIG));
                }
                let n = buf.len().min((*size - offset) as usize);
                self.driver
                    .bo_write(owner, *bo, offset, &buf[..n])
                    .map_err(|e| err(driver_errno(&e)))
            }
        }
    }

    fn fsize(&mut self, id: usize, ctx: &CallerCtx) -> Result<u64> {
        let h = self.handle(id)?;
        match &h.kind {
            Kind::Bo { size, .. } => Ok(*size),
            // The size of what this handle reads (see `crate::snapshots`).
            Kind::File { .. } => self.snapshot_len(id, ctx),
            _ => Ok(0),
        }
    }

    fn fcntl(&mut self, id: usize, _cmd: usize, _arg: usize, _ctx: &CallerCtx) -> Result<usize> {
        self.handle(id)?;
        Ok(0)
    }

    fn fevent(&mut self, id: usize, _flags: EventFlags, _ctx: &CallerCtx) -> Result<EventFlags> {
        self.handle(id)?;
        Ok(EventFlags::empty())
    }

    fn fpath(&mut self, id: usize, buf: &mut [u8], _ctx: &CallerCtx) -> Result<usize> {
        let h = self.handle(id)?;
        let path = match &h.kind {
            Kind::Dir(d) => format!("pddgpu:/{}", d.path()),
            Kind::File { kind, .. } => format!("pddgpu:/{}", kind.name()),
            Kind::Control => "pddgpu:/control".to_string(),
            Kind::Config { name, .. } => format!("pddgpu:/config/{name}"),
            Kind::Bo { id, .. } => format!("pddgpu:/bo/{}", id.0),
        };
        Ok(copy_at(path.as_bytes(), 0, buf))
    }

    fn fstat(&mut self, id: usize, stat: &mut Stat, ctx: &CallerCtx) -> Result<()> {
        if matches!(self.handle(id)?.kind, Kind::File { .. }) {
            // The size of what this handle reads (see `crate::snapshots`).
            let size = self.snapshot_len(id, ctx)?;
            *stat = file_stat(MODE_FILE | 0o444, size, 2, ctx);
            return Ok(());
        }
        let h = self.handle(id)?;
        let (mode, size, ino) = match &h.kind {
            Kind::Dir(_) => (MODE_DIR | 0o555, 0, 1),
            Kind::File { .. } => return Err(err(EBADF)),
            Kind::Control => (MODE_FILE | 0o200, 0, 3),
            Kind::Config { .. } => (MODE_FILE | 0o644, 0, 4),
            Kind::Bo { id, size, .. } => (MODE_FILE | 0o600, *size, id.0),
        };
        *stat = file_stat(mode, size, ino, ctx);
        Ok(())
    }

    fn fsync(&mut self, id: usize, _ctx: &CallerCtx) -> Result<()> {
        self.handle(id).map(|_| ())
    }

    fn getdents<'buf>(
        &mut self,
        id: usize,
        mut buf: DirentBuf<&'buf mut [u8]>,
        opaque_offset: u64,
    ) -> Result<DirentBuf<&'buf mut [u8]>> {
        let h = self.handle(id)?;
        let Kind::Dir(dir) = h.kind else {
            return Err(err(ENOTDIR));
        };
        let entries: Vec<(String, DirentKind)> = match dir {
            DirKind::Root => FileKind::ALL
                .iter()
                .map(|(n, _)| (n.to_string(), DirentKind::Regular))
                .chain([
                    ("control".to_string(), DirentKind::Regular),
                    ("config".to_string(), DirentKind::Directory),
                    ("bo".to_string(), DirentKind::Directory),
                ])
                .collect(),
            DirKind::Config => self
                .driver
                .tunables()
                .names()
                .map(|n| (n.to_string(), DirentKind::Regular))
                .collect(),
            DirKind::Bo => self
                .driver
                .owner_bos(h.owner)
                .into_iter()
                .map(|bo| (bo.to_string(), DirentKind::Regular))
                .collect(),
        };
        let start = usize::try_from(opaque_offset).unwrap_or(usize::MAX);
        for (written, (i, (name, kind))) in entries.iter().enumerate().skip(start).enumerate() {
            let entry = DirEntry {
                inode: i as u64 + 1,
                next_opaque_id: i as u64 + 1,
                name,
                kind: *kind,
            };
            if buf.entry(entry).is_err() {
                if written == 0 {
                    return Err(err(EINVAL));
                }
                break;
            }
        }
        Ok(buf)
    }

    fn call(
        &mut self,
        id: usize,
        payload: &mut [u8],
        metadata: &[u64],
        ctx: &CallerCtx,
    ) -> Result<usize> {
        let h = self.handle(id)?;
        if !matches!(h.kind, Kind::Bo { .. }) {
            return Err(err(EOPNOTSUPP));
        }
        let op = metadata.first().copied().and_then(BoCall::from_raw);
        let Some(op) = op else {
            self.log_refusal(ctx, "call", EINVAL, &format!("unknown call {metadata:?}"));
            return Err(err(EINVAL));
        };
        match op {
            BoCall::Info => {
                if payload.len() != BoInfoWire::SIZE {
                    return Err(err(EINVAL));
                }
                let wire = info_wire(&self.bo_info(h)?);
                payload.copy_from_slice(&wire.encode());
                Ok(BoInfoWire::SIZE)
            }
            BoCall::Segments => {
                if payload.len() % SegmentWire::SIZE != 0 || payload.is_empty() {
                    return Err(err(EINVAL));
                }
                let info = self.bo_info(h)?;
                let start =
                    usize::try_from(metadata.get(1).copied().unwrap_or(0)).unwrap_or(usize::MAX);
                let mut n = 0;
                for (slot, &(bo_offset, backing_offset, len)) in payload
                    .chunks_exact_mut(SegmentWire::SIZE)
                    .zip(info.segments.iter().skip(start))
                {
                    let seg = SegmentWire {
                        bo_offset,
                        backing_offset,
                        len,
                    };
                    slot.copy_from_slice(&seg.encode());
                    n += 1;
                }
                Ok(n)
            }
            BoCall::Export => {
                self.state_changed();
                let h = self.handle(id)?;
                if payload.len() != ExportWire::SIZE {
                    return Err(err(EINVAL));
                }
                let Kind::Bo { id: bo, .. } = h.kind else {
                    return Err(err(EBADF));
                };
                let owner = h.owner;
                let token = self
                    .driver
                    .bo_export(owner, bo)
                    .map_err(|e| err(driver_errno(&e)))?;
                let wire = ExportWire {
                    abi: WIRE_ABI,
                    reserved: 0,
                    id: bo.0,
                    token: token.to_bytes(),
                };
                payload.copy_from_slice(&wire.encode());
                Ok(ExportWire::SIZE)
            }
        }
    }

    fn dup(&mut self, id: usize, buf: &[u8], ctx: &CallerCtx) -> Result<OpenResult> {
        let h = self.handle(id)?;
        let Kind::Bo { domain, .. } = h.kind else {
            return Err(err(EOPNOTSUPP));
        };
        #[cfg(not(target_os = "redox"))]
        {
            use std::os::fd::IntoRawFd;
            let fd = if buf == pddgpu_ipc::wire::DUP_BACKING {
                let writable = h.write;
                let info = self.bo_info(h)?;
                let map = |s: &mut Self| {
                    s.backing.bo_memory_fd(
                        domain,
                        info.id.0,
                        info.size,
                        &info.segments,
                        writable,
                        ctx.uid,
                    )
                };
                match map(self) {
                    // Memories of BOs freed since the last sweep still
                    // count: give them back, then try once more.
                    Err(
                        crate::backing::BoMemoryError::TooManyMappings
                        | crate::backing::BoMemoryError::UserShareUsed { .. },
                    ) => {
                        self.sweep_bo_memories();
                        map(self)
                    }
                    done => done,
                }
            } else if buf == pddgpu_ipc::wire::DUP_DOMAIN_BACKING {
                if !self.privileged(ctx) {
                    self.log_refusal(
                        ctx,
                        "map a whole domain",
                        EACCES,
                        "needs root or the server's user",
                    );
                    return Err(err(EACCES));
                }
                self.backing.whole_domain_fd(domain)
            } else {
                return Err(err(EINVAL));
            };
            match fd {
                Ok(fd) => Ok(OpenResult::OtherScheme {
                    fd: fd.into_raw_fd() as usize,
                }),
                Err(e) => {
                    let errno = e.errno();
                    self.log_refusal(ctx, "map a BO", errno, &e.to_string());
                    Err(err(errno))
                }
            }
        }
        #[cfg(target_os = "redox")]
        {
            let _ = (domain, buf, ctx);
            Err(err(EOPNOTSUPP))
        }
    }

    fn mmap_prep(
        &mut self,
        id: usize,
        offset: u64,
        size: usize,
        flags: MapFlags,
        _ctx: &CallerCtx,
    ) -> Result<usize> {
        let h = self.handle(id)?;
        let Kind::Bo { domain, .. } = h.kind else {
            return Err(err(EOPNOTSUPP));
        };
        // A read-only handle maps read-only.
        if flags.contains(MapFlags::PROT_WRITE) && !h.write {
            return Err(err(EACCES));
        }
        if self.backing.server_addr(domain).is_none() {
            return Err(err(EOPNOTSUPP));
        }
        let info = self.bo_info(h)?;
        // Only the BO's own pages, inside one of its segments.
        self.backing
            .kernel_map_addr(domain, &info.segments, offset, size)
            .ok_or(err(EINVAL))
    }

    fn munmap(
        &mut self,
        id: usize,
        _offset: u64,
        _size: usize,
        _flags: MunmapFlags,
        _ctx: &CallerCtx,
    ) -> Result<()> {
        self.handle(id)?;
        Ok(())
    }

    fn on_close(&mut self, id: usize) {
        self.close(id);
    }
}
