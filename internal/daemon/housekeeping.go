package daemon

import (
	"context"
	"fmt"
	"path/filepath"
	"syscall"
	"time"

	"github.com/scopewatch/scopewatch/internal/store"
)

// housekeeping completes idle slides, applies retention and the disk caps,
// and refreshes the gauges, until ctx is cancelled.
func (d *Daemon) housekeeping(ctx context.Context) {
	idle := time.NewTicker(time.Second)
	defer idle.Stop()
	var lastStorage time.Time
	d.storageCheck(ctx)
	lastStorage = d.now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-idle.C:
		}
		cfg := d.config()
		if cfg.Slides.IdleTimeout > 0 {
			d.completeIdle(ctx, cfg.Slides.IdleTimeout)
		}
		if d.now().Sub(lastStorage) >= cfg.Storage.CheckInterval {
			d.storageCheck(ctx)
			lastStorage = d.now()
		}
	}
}

func (d *Daemon) completeIdle(ctx context.Context, idle time.Duration) {
	slides, err := d.db.idleSlides(ctx, d.now().Add(-idle))
	if err != nil {
		d.log.Warn("idle slide check failed", "err", err)
		return
	}
	for _, s := range slides {
		if d.inbox != nil && d.inbox.busy(s) {
			continue // images of this slide are still queued
		}
		if _, _, err := d.completeSlide(ctx, s, "idle_timeout"); err != nil {
			d.log.Error("completing idle slide failed", "slide", s, "err", err)
		}
	}
}

// storageCheck applies retention, then the database cap and the free-space
// floor. Hitting a cap sheds the oldest per-cell predictions and raises an
// alert; the daemon keeps running.
func (d *Daemon) storageCheck(ctx context.Context) {
	cfg := d.config()
	if n, err := d.db.prune(ctx, d.now().Add(-cfg.Storage.Retention)); err != nil {
		d.log.Warn("retention failed", "err", err)
	} else if n > 0 {
		d.log.Info("retention removed old rows", "rows", n)
	}
	if err := store.Checkpoint(ctx, d.db.db); err != nil {
		d.log.Debug("checkpoint", "err", err)
	}
	size, err := store.Measure(ctx, d.db.db)
	if err != nil {
		d.log.Warn("measuring database failed", "err", err)
		return
	}
	d.metrics.dbBytes.Set(float64(size.UsedBytes))
	over := size.UsedBytes > cfg.Storage.MaxDBBytes
	if over {
		// Shed in steps until under the cap (or nothing is left to shed).
		for i := 0; i < 100 && size.UsedBytes > cfg.Storage.MaxDBBytes; i++ {
			n, err := d.db.shedOldest(ctx, 5000)
			if err != nil || n == 0 {
				break
			}
			if size, err = store.Measure(ctx, d.db.db); err != nil {
				break
			}
		}
		d.metrics.dbBytes.Set(float64(size.UsedBytes))
	}
	stillOver := size.UsedBytes > cfg.Storage.MaxDBBytes
	d.capState(ctx, "db_cap", over, fmt.Sprintf("database uses %d bytes, cap storage.max_db_bytes=%d; oldest predictions removed", size.UsedBytes, cfg.Storage.MaxDBBytes), stillOver)

	free, err := freeBytes(filepath.Dir(cfg.Database))
	if err != nil {
		d.log.Warn("free space check failed", "err", err)
		return
	}
	d.metrics.diskFree.Set(float64(free))
	low := cfg.Storage.MinFreeBytes > 0 && free < uint64(cfg.Storage.MinFreeBytes)
	d.capState(ctx, "disk_full", low, fmt.Sprintf("%d bytes free under %s, floor storage.min_free_bytes=%d", free, filepath.Dir(cfg.Database), cfg.Storage.MinFreeBytes), low)
}

// capState raises an alert when a cap is first reached and keeps the status
// degraded while the condition lasts.
func (d *Daemon) capState(ctx context.Context, kind string, reached bool, detail string, persists bool) {
	_, was := d.degraded.Load(kind)
	if reached && !was {
		d.log.Warn("storage limit reached", "kind", kind, "detail", detail)
		d.alert(ctx, kind, detail)
	}
	d.setDegraded(kind, detail, persists)
}

func freeBytes(dir string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return st.Bavail * uint64(st.Bsize), nil
}
