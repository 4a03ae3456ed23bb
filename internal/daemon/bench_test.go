package daemon

import (
	"bytes"
	"context"
	"log/slog"
	"mime"
	"net/http/httptest"
	"os"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/scopewatch/scopewatch/internal/config"
	"github.com/scopewatch/scopewatch/internal/synth"
)

// BenchmarkAnalyzeField measures segmentation plus classification of one
// synthetic 1920x1080 field with the default model, as the daemon runs it
// (one worker). It reports the median per field besides ns/op:
//
//	go test -run '^$' -bench AnalyzeField -benchtime 20x ./internal/daemon/
func BenchmarkAnalyzeField(b *testing.B) {
	cfg := config.Default()
	cfg.Model.Path = requireDefaultModel(b)
	cfg.Model.Keys = os.Getenv("SCOPEWATCH_TEST_KEYS")
	// SCOPEWATCH_BENCH_BATCH / _THREADS compare against model.batch / threads.
	if v, err := strconv.Atoi(os.Getenv("SCOPEWATCH_BENCH_BATCH")); err == nil {
		cfg.Model.Batch = v
	}
	if v, err := strconv.Atoi(os.Getenv("SCOPEWATCH_BENCH_THREADS")); err == nil {
		cfg.Model.Threads = v
	}
	a, err := openAnalyzer(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	const nFields = 8
	fields := make([][]byte, nFields)
	cells := 0
	for i := range fields {
		img, truth, _ := synth.FieldAt(9400, synth.Knobs{}, nFields, i)
		fields[i] = encodePNG(b, img)
		cells += truth.RBC
	}
	ctx := context.Background()
	an, err := a.Analyze(ctx, fields[0], "auto")
	if err != nil {
		b.Fatal(err)
	}
	if an.Kind != "field" {
		b.Fatalf("a 1920x1080 image analysed as %s", an.Kind)
	}
	times := make([]time.Duration, 0, b.N)
	found := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		an, err := a.Analyze(ctx, fields[i%nFields], "field")
		if err != nil {
			b.Fatal(err)
		}
		times = append(times, time.Since(start))
		found += len(an.Cells)
	}
	b.StopTimer()
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	b.ReportMetric(times[len(times)/2].Seconds()*1000, "median_ms/field")
	b.ReportMetric(float64(found)/float64(b.N), "cells/field")
	b.ReportMetric(float64(cells)/nFields, "truth_rbc/field")
}

// FuzzReadUpload: arbitrary content types and bodies never panic, and a
// raw body comes back unchanged.
func FuzzReadUpload(f *testing.F) {
	f.Add("image/png", []byte("\x89PNG\r\n\x1a\n"))
	f.Add("multipart/form-data; boundary=zz", []byte("--zz\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\nxyz\r\n--zz--\r\n"))
	f.Add("multipart/form-data; boundary=zz", []byte("--zz\r\nbroken"))
	f.Add("multipart/form-data", []byte(""))
	f.Add("text/plain; charset=\"", []byte("x"))
	f.Fuzz(func(t *testing.T, ctype string, body []byte) {
		r := httptest.NewRequest("POST", "/v1/images", bytes.NewReader(body))
		r.Header.Set("Content-Type", ctype)
		data, name, err := readUpload(r)
		if err != nil {
			return
		}
		mt, _, _ := mime.ParseMediaType(ctype)
		if mt != "multipart/form-data" && (!bytes.Equal(data, body) || name != "") {
			t.Fatalf("raw body changed: %q -> %q (name %q)", body, data, name)
		}
	})
}
