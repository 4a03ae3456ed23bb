package synth

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
)

// LabelsFile is the name of the labels table written beside the crops.
const LabelsFile = "labels.csv"

// CellsConfig describes a crop run on disk.
type CellsConfig struct {
	Dir           string
	N             int
	Seed          int64
	CellsPerSlide int // <= 0: DefaultCellsPerSlide
	Knobs         Knobs
	Workers       int // <= 0: GOMAXPROCS
	// Progress, if set, is called after each written image (from any
	// goroutine).
	Progress func()
}

// CellsSummary counts what a run wrote.
type CellsSummary struct {
	Images      int
	Slides      int
	Parasitized int
}

// WriteCells writes N crops as Dir/<slide>/cell_NNNNNN.png (or .jpg) and
// Dir/labels.csv with header path,label,slide (paths relative to Dir, in
// index order). The files are byte-identical for the same config whatever
// the number of workers.
func WriteCells(ctx context.Context, cfg CellsConfig) (CellsSummary, error) {
	if cfg.N <= 0 {
		return CellsSummary{}, fmt.Errorf("n: %d, want > 0", cfg.N)
	}
	if err := cfg.Knobs.Validate(); err != nil {
		return CellsSummary{}, err
	}
	per := cfg.CellsPerSlide
	if per <= 0 {
		per = DefaultCellsPerSlide
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return CellsSummary{}, fmt.Errorf("create output folder: %w", err)
	}
	type rec struct {
		path, slide string
		label       Label
	}
	recs := make([]rec, cfg.N)
	nSlides := (cfg.N + per - 1) / per
	for si := range nSlides {
		if err := os.MkdirAll(filepath.Join(cfg.Dir, SlideID(cfg.Seed, si)), 0o755); err != nil {
			return CellsSummary{}, fmt.Errorf("create slide folder: %w", err)
		}
	}
	err := parallel(ctx, cfg.N, cfg.Workers, func(i int) error {
		s := CellAt(cfg.Seed, cfg.Knobs, per, i)
		rel := filepath.Join(s.Slide, s.Name+cfg.Knobs.Ext())
		var buf bytes.Buffer
		if err := Encode(&buf, s.raw, cfg.Knobs); err != nil {
			return fmt.Errorf("encode %s: %w", rel, err)
		}
		if err := os.WriteFile(filepath.Join(cfg.Dir, rel), buf.Bytes(), 0o644); err != nil {
			return fmt.Errorf("write image: %w", err)
		}
		recs[i] = rec{path: filepath.ToSlash(rel), slide: s.Slide, label: s.Label}
		if cfg.Progress != nil {
			cfg.Progress()
		}
		return nil
	})
	if err != nil {
		return CellsSummary{}, err
	}
	sum := CellsSummary{Images: cfg.N, Slides: nSlides}
	f, err := os.Create(filepath.Join(cfg.Dir, LabelsFile))
	if err != nil {
		return sum, fmt.Errorf("create labels: %w", err)
	}
	bw := bufio.NewWriter(f)
	w := csv.NewWriter(bw)
	_ = w.Write([]string{"path", "label", "slide"})
	for _, r := range recs {
		if r.label == Parasitized {
			sum.Parasitized++
		}
		_ = w.Write([]string{r.path, r.label.String(), r.slide})
	}
	w.Flush()
	err = errors.Join(w.Error(), bw.Flush(), f.Close())
	if err != nil {
		return sum, fmt.Errorf("write labels: %w", err)
	}
	return sum, nil
}

// parallel runs fn(0..n-1) on workers goroutines, stopping at the first
// error or when ctx is cancelled.
func parallel(ctx context.Context, n, workers int, fn func(i int) error) error {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	workers = min(workers, n)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	idx := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range idx {
				if err := fn(i); err != nil {
					cancel(err)
					return
				}
			}
		}()
	}
feed:
	for i := range n {
		select {
		case idx <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(idx)
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return err
	}
	return nil
}
