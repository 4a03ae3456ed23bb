package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/scopewatch/scopewatch/internal/config"
	"github.com/scopewatch/scopewatch/internal/daemon"
)

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("serve", stderr)
	cfgPath := fs.String("config", "/etc/scopewatch/scopewatch.yaml", "configuration file (see `scopewatch config default`)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("%w: unexpected arguments %v", errUsage, fs.Args())
	}
	cfg, err := config.Load(*cfgPath, os.LookupEnv)
	if err != nil {
		return err
	}
	// The Go heap churns through a few tens of MB per field (file bytes,
	// segment map, batch buffers); a soft limit makes the collector return
	// it instead of letting the heap double between cycles, which keeps
	// the resident set within the device budget. GOMEMLIMIT in the
	// environment wins.
	if _, set := os.LookupEnv("GOMEMLIMIT"); !set {
		debug.SetMemoryLimit(cfg.Memory.GoLimit)
	}
	level := new(slog.LevelVar)
	level.Set(daemon.ParseLevel(cfg.Log.Level))
	log := newLogger(stderr, cfg.Log.Format, level)
	d, err := daemon.New(ctx, cfg, log, level)
	if err != nil {
		return err
	}

	// SIGHUP reloads; main owns SIGINT/SIGTERM (they cancel ctx).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reloadDone := make(chan struct{})
	go func() {
		defer close(reloadDone)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				next, err := config.Load(*cfgPath, os.LookupEnv)
				if err != nil {
					log.Error("reload refused; keeping the running configuration", "err", err)
					continue
				}
				d.Reload(next)
			}
		}
	}()
	err = d.Run(ctx)
	<-reloadDone
	return err
}

// newLogger writes JSON (one object per line) or text to w. journald adds
// its own timestamp, but a shipped log needs one too, so it is kept.
func newLogger(w io.Writer, format string, level *slog.LevelVar) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
