package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/scopewatch/scopewatch/inference"
)

// frameSource is a camera or video file (inference.Capture).
type frameSource interface {
	Frame() ([]byte, error)
	Live() bool
	Close() error
}

var _ frameSource = (*inference.Capture)(nil)

// runCamera takes a frame every camera.interval and queues it for slide
// camera.slide, until ctx ends or a video file runs out. A camera that
// fails is reopened with backoff; the daemon keeps serving meanwhile.
func (d *Daemon) runCamera(ctx context.Context, open func(string) (frameSource, error)) {
	cfg := d.config()
	var src frameSource
	defer func() {
		if src != nil {
			src.Close()
		}
	}()
	backoff := time.Second
	t := time.NewTicker(cfg.Camera.Interval)
	defer t.Stop()
	seq := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if src == nil {
			s, err := open(cfg.Camera.Source)
			if err != nil {
				d.log.Error("camera unavailable; retrying", "source", cfg.Camera.Source, "err", err, "retry_in", backoff.String())
				d.setDegraded("camera", err.Error(), true)
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, time.Minute)
				continue
			}
			src, backoff = s, time.Second
			d.setDegraded("camera", "", false)
		}
		data, err := src.Frame()
		if errors.Is(err, inference.ErrEndOfStream) {
			d.log.Info("video file finished", "source", cfg.Camera.Source, "frames", seq)
			return
		}
		if err != nil {
			d.log.Error("camera frame failed; reopening", "source", cfg.Camera.Source, "err", err)
			d.metrics.errors.WithLabelValues("camera").Inc()
			src.Close()
			src = nil
			continue
		}
		seq++
		name := fmt.Sprintf("frame-%d-%06d.png", d.boot, seq)
		if !d.submit(job{slide: cfg.Camera.Slide, name: name, source: "camera", data: data, done: func(r jobResult) {
			if r.err != nil {
				d.log.Warn("camera frame not counted", "frame", name, "err", r.err)
			}
		}}) {
			d.log.Warn("queue full; camera frame dropped", "frame", name)
			d.metrics.images.WithLabelValues("camera", "dropped").Inc()
		}
	}
}

func openCapture(source string) (frameSource, error) { return inference.OpenCapture(source) }
