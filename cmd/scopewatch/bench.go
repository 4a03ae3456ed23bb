package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/internal/synth"
)

const benchUsage = `usage: scopewatch bench [--model DIR] [--data DIR] [--format text|json] [--batch N,...] [--duration D]

Measures, in one run and on the same images and batch sizes, bare ONNX
Runtime on pre-made input tensors and the full pipeline (decode, preprocess,
infer, head) on the encoded images held in memory. The two are measured in
alternating rounds so that load from other processes affects both alike.
Prints images/s, per-image latency (p50/p99), the ratio pipeline/bare and
the peak resident memory. With --format json the last line is one JSON
object: bare_img_per_s, pipeline_img_per_s, ratio, p50_ms, p99_ms,
peak_rss_mb (for the last batch size given), plus every batch size's figures.

`

type benchRun struct {
	Batch          int     `json:"batch"`
	BareImgPerS    float64 `json:"bare_img_per_s"`
	PipelineImgPer float64 `json:"pipeline_img_per_s"`
	Ratio          float64 `json:"ratio"`
	BareP50Ms      float64 `json:"bare_p50_ms"`
	BareP99Ms      float64 `json:"bare_p99_ms"`
	P50Ms          float64 `json:"p50_ms"`
	P99Ms          float64 `json:"p99_ms"`
	Images         int     `json:"images"`
	// CPU time (user+system, whole process) per image: unlike wall-clock
	// throughput it is barely affected by other processes competing for
	// the CPUs, so CPURatio estimates the ratio on an otherwise idle
	// machine when both modes keep every core busy.
	BareCPUMsPerImg float64 `json:"bare_cpu_ms_per_img"`
	PipeCPUMsPerImg float64 `json:"pipeline_cpu_ms_per_img"`
	CPURatio        float64 `json:"cpu_ratio"`
}

type benchSummary struct {
	BareImgPerS      float64    `json:"bare_img_per_s"`
	PipelineImgPerS  float64    `json:"pipeline_img_per_s"`
	Ratio            float64    `json:"ratio"`
	P50Ms            float64    `json:"p50_ms"`
	P99Ms            float64    `json:"p99_ms"`
	PeakRSSMB        float64    `json:"peak_rss_mb"`
	CPURatio         float64    `json:"cpu_ratio"`
	LoadAvg1         float64    `json:"loadavg_1m"`
	Batch            int        `json:"batch"`
	Model            string     `json:"model"`
	Images           int        `json:"images"`
	Sessions         int        `json:"sessions"`
	IntraOpThreads   int        `json:"intra_op_threads"`
	Workers          int        `json:"workers"`
	CPUs             int        `json:"cpus"`
	DurationPerModeS float64    `json:"duration_per_mode_s"`
	Runs             []benchRun `json:"runs"`
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench", stderr)
	fs.Usage = func() { fmt.Fprint(stderr, benchUsage); fs.PrintDefaults() }
	data := fs.String("data", "", "folder of images to use (default: generate crops in memory)")
	n := fs.Int("n", 512, "number of crops to generate when --data is not given (and the most taken from --data)")
	seed := fs.Int64("seed", 900001, "seed of the generated crops")
	format := fs.String("format", "text", "text or json")
	batches := fs.String("batch", "8,32", "comma-separated batch sizes")
	duration := fs.Duration("duration", 6*time.Second, "measuring time per mode and batch size")
	workers := fs.Int("workers", 0, "decode/preprocess goroutines (0: one per CPU)")
	mf := addModelFlags(fs, modelFlagOptions{sessions: true})
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, pos)
	}
	if *format != "text" && *format != "json" {
		return fmt.Errorf("%w: --format must be text or json, got %q", errUsage, *format)
	}
	sizes, err := parseBatchList(*batches)
	if err != nil {
		return err
	}
	if *duration <= 0 || *n < 1 {
		return fmt.Errorf("%w: --duration and --n must be positive", errUsage)
	}

	images, source, err := benchImages(*data, *n, *seed)
	if err != nil {
		return err
	}
	maxBatch := sizes[0]
	for _, s := range sizes {
		maxBatch = max(maxBatch, s)
	}
	clf, bundle, err := mf.open(inference.ClassifierOptions{Batch: maxBatch, Workers: *workers, NoFeatures: true})
	if err != nil {
		return err
	}
	defer bundle.Close()
	defer clf.Close()

	// Pre-made tensors for the bare runs: every image preprocessed once.
	tensors, err := benchTensors(clf, images)
	if err != nil {
		return err
	}
	eng := clf.Engine()
	sum := benchSummary{
		Model: clf.Version(), Images: len(images), Sessions: eng.Sessions(), IntraOpThreads: eng.IntraOpThreads(),
		Workers: *workers, CPUs: runtime.NumCPU(), DurationPerModeS: duration.Seconds(),
	}
	if sum.Workers <= 0 {
		sum.Workers = runtime.NumCPU()
	}
	if *format == "text" {
		fmt.Fprintf(stdout, "model %s, %d images (%s), %d CPUs, %d session(s) x %d intra-op threads, %d decode workers, %s per mode\n",
			clf.Version(), len(images), source, runtime.NumCPU(), eng.Sessions(), eng.IntraOpThreads(), sum.Workers, *duration)
		fmt.Fprintf(stdout, "%6s %12s %12s %7s %10s %10s %10s %10s %14s %14s %9s\n", "batch", "bare img/s", "pipe img/s", "ratio", "bare p50", "bare p99", "pipe p50", "pipe p99", "bare cpu/img", "pipe cpu/img", "cpu ratio")
	}
	for _, size := range sizes {
		r, err := benchBatch(ctx, clf, images, tensors, size, *duration)
		if err != nil {
			return err
		}
		sum.Runs = append(sum.Runs, r)
		if *format == "text" {
			fmt.Fprintf(stdout, "%6d %12.1f %12.1f %7.3f %8.2fms %8.2fms %8.2fms %8.2fms %12.3fms %12.3fms %9.3f\n",
				r.Batch, r.BareImgPerS, r.PipelineImgPer, r.Ratio, r.BareP50Ms, r.BareP99Ms, r.P50Ms, r.P99Ms, r.BareCPUMsPerImg, r.PipeCPUMsPerImg, r.CPURatio)
		}
	}
	last := sum.Runs[len(sum.Runs)-1]
	sum.Batch, sum.BareImgPerS, sum.PipelineImgPerS, sum.Ratio = last.Batch, last.BareImgPerS, last.PipelineImgPer, last.Ratio
	sum.P50Ms, sum.P99Ms = last.P50Ms, last.P99Ms
	sum.PeakRSSMB = peakRSSMB()
	sum.CPURatio = last.CPURatio
	sum.LoadAvg1 = loadAvg()
	if *format == "json" {
		return json.NewEncoder(stdout).Encode(sum)
	}
	fmt.Fprintf(stdout, "load average (1 min) at the end: %.2f on %d CPUs; a loaded machine makes the wall-clock ratio noisy, the CPU ratio less so\n", sum.LoadAvg1, runtime.NumCPU())
	fmt.Fprintf(stdout, "peak RSS %.1f MB; latency is per image, from the start of its decoding (pipeline) or of its batch's run (bare) to its result\n", sum.PeakRSSMB)
	return nil
}

func parseBatchList(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v < 1 || v > 4096 {
			return nil, fmt.Errorf("%w: --batch: %q is not a batch size in 1..4096", errUsage, f)
		}
		out = append(out, v)
	}
	return out, nil
}

// benchImages loads the encoded images of dir (as classify would find
// them), or generates n synthetic crops in memory.
func benchImages(dir string, n int, seed int64) ([][]byte, string, error) {
	if dir != "" {
		paths, _, errs := collectInputs([]string{dir})
		if len(errs) > 0 {
			return nil, "", fmt.Errorf("list %s: %v", errs[0].path, errs[0].err)
		}
		if len(paths) > n {
			paths = paths[:n]
		}
		var imgs [][]byte
		for _, p := range paths {
			b, err := os.ReadFile(p)
			if err != nil {
				return nil, "", err
			}
			imgs = append(imgs, b)
		}
		if len(imgs) == 0 {
			return nil, "", fmt.Errorf("no images in %s", dir)
		}
		return imgs, "from " + dir, nil
	}
	imgs := make([][]byte, n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	next := make(chan int)
	for range runtime.NumCPU() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				s := synth.CellAt(seed, synth.Knobs{}, 0, i)
				var buf bytes.Buffer
				if err := synth.Encode(&buf, s.Image, synth.Knobs{}); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					continue
				}
				imgs[i] = buf.Bytes()
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		return nil, "", fmt.Errorf("generate crops: %w", firstErr)
	}
	return imgs, fmt.Sprintf("synthetic PNG crops, seed %d", seed), nil
}

func benchTensors(clf *inference.Classifier, images [][]byte) ([]float32, error) {
	size := clf.Preprocessor().Size()
	out := make([]float32, len(images)*size)
	for i, img := range images {
		m, err := clf.Decoder().Decode(img)
		if err != nil {
			return nil, fmt.Errorf("image %d: %w", i, err)
		}
		err = clf.Preprocessor().Mat(out[i*size:(i+1)*size], m)
		m.Close()
		if err != nil {
			return nil, fmt.Errorf("image %d: %w", i, err)
		}
	}
	return out, nil
}

// benchRoundImages is the least number of images per measuring round.
const benchRoundImages = 1024

// benchBatch alternates bare and pipeline rounds at one batch size until
// each mode has run for at least d.
func benchBatch(ctx context.Context, clf *inference.Classifier, images [][]byte, tensors []float32, size int, d time.Duration) (benchRun, error) {
	eng := clf.Engine()
	per := clf.Preprocessor().Size()
	// A round streams the image set several times over, as classify streams
	// a large folder: a pipeline's fill and drain at the ends of a short
	// stream would otherwise weigh on the pipeline figure only.
	n := len(images) * max(1, (benchRoundImages+len(images)-1)/len(images))
	var bareTime, pipeTime, bareCPU, pipeCPU time.Duration
	var bareN, pipeN int
	var bareLat, pipeLat []float64

	bareRound := func() error {
		// Each session runs its share of the batches from its own goroutine,
		// with its own batch buffer, so that bare runs use every session
		// exactly as the pipeline does.
		batches := (n + size - 1) / size
		next := make(chan int, batches)
		for k := range batches {
			next <- k
		}
		close(next)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var firstErr error
		start, cpu0 := time.Now(), processCPU()
		for range eng.Sessions() {
			b, err := eng.NewBatch(size)
			if err != nil {
				return err
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer b.Close()
				for k := range next {
					lo, hi := k*size, min((k+1)*size, n)
					for i := lo; i < hi; i++ {
						j := i % len(images)
						copy(b.Input(i-lo), tensors[j*per:(j+1)*per])
					}
					t0 := time.Now()
					err := eng.Run(b, hi-lo)
					lat := time.Since(t0).Seconds() * 1000
					mu.Lock()
					if err != nil && firstErr == nil {
						firstErr = err
					}
					for range hi - lo {
						bareLat = append(bareLat, lat)
					}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		bareTime += time.Since(start)
		bareCPU += processCPU() - cpu0
		bareN += n
		return firstErr
	}
	pipeRound := func() error {
		starts := make([]time.Time, n)
		var failed error
		start, cpu0 := time.Now(), processCPU()
		err := clf.StreamBatch(ctx, size, n, func(i int) inference.Input {
			starts[i] = time.Now()
			return inference.Input{Data: images[i%len(images)]}
		}, func(r inference.Result) {
			if r.Err != nil && failed == nil {
				failed = fmt.Errorf("image %d: %w", r.Index, r.Err)
			}
			pipeLat = append(pipeLat, time.Since(starts[r.Index]).Seconds()*1000)
		})
		pipeTime += time.Since(start)
		pipeCPU += processCPU() - cpu0
		pipeN += n
		if err != nil {
			return err
		}
		return failed
	}
	// Warm up both paths (thread pools, allocator, caches) before measuring.
	if err := bareRound(); err != nil {
		return benchRun{}, err
	}
	if err := pipeRound(); err != nil {
		return benchRun{}, err
	}
	bareTime, pipeTime, bareN, pipeN, bareLat, pipeLat = 0, 0, 0, 0, nil, nil
	bareCPU, pipeCPU = 0, 0
	for bareTime < d || pipeTime < d {
		if err := ctx.Err(); err != nil {
			return benchRun{}, err
		}
		if err := bareRound(); err != nil {
			return benchRun{}, err
		}
		if err := pipeRound(); err != nil {
			return benchRun{}, err
		}
	}
	r := benchRun{
		Batch:          size,
		BareImgPerS:    float64(bareN) / bareTime.Seconds(),
		PipelineImgPer: float64(pipeN) / pipeTime.Seconds(),
		Images:         pipeN,
	}
	r.Ratio = r.PipelineImgPer / r.BareImgPerS
	r.BareCPUMsPerImg = bareCPU.Seconds() * 1000 / float64(bareN)
	r.PipeCPUMsPerImg = pipeCPU.Seconds() * 1000 / float64(pipeN)
	r.CPURatio = r.BareCPUMsPerImg / r.PipeCPUMsPerImg
	r.BareP50Ms, r.BareP99Ms = percentile(bareLat, 0.50), percentile(bareLat, 0.99)
	r.P50Ms, r.P99Ms = percentile(pipeLat, 0.50), percentile(pipeLat, 0.99)
	return r, nil
}

func percentile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(i, 0)]
}

// processCPU is the user+system CPU time used by the process so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// loadAvg is the 1-minute load average, to tell a measurement made on a
// busy machine from one made on an idle one.
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return math.NaN()
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return math.NaN()
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return math.NaN()
	}
	return v
}

// peakRSSMB is the process's peak resident set size (getrusage maxrss,
// reported in KiB on Linux).
func peakRSSMB() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return math.NaN()
	}
	return float64(ru.Maxrss) / 1024
}
