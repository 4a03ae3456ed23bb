package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/scopewatch/scopewatch/feedback"
	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/internal/mqttconn"
	"github.com/scopewatch/scopewatch/internal/retune"
	"github.com/scopewatch/scopewatch/internal/store"
	"github.com/scopewatch/scopewatch/tuning"
)

// tuneWorker is `tune worker`: flags to the worker and, unless --collect
// is false, the collector that fills its dataset, then both run until a
// signal ends ctx.
func tuneWorker(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tune worker", stderr)
	broker := fs.String("broker", "tcp://127.0.0.1:1883", "MQTT broker URL (tcp://, ssl://, ws://, wss://)")
	clientID := fs.String("client-id", "", "MQTT client id prefix, stable across restarts (default tune-HOSTNAME; -retune and -collect are appended)")
	dbPath := fs.String("db", "", "the worker's database (job queue, models, offers), e.g. /var/lib/scopewatch-tune/worker.db")
	out := fs.String("out", "", "folder of the jobs (exported feedback, studies, bundles) and the sealed-test ledger")
	keyPath := fs.String("key", "", "fleet private key that signs the offered bundles")
	dataset := fs.String("dataset", "", "collector dataset (DIR/collect.db) with the sites' labelled feedback")
	collect := fs.Bool("collect", true, "also collect feedback and labels into --dataset (false when a separate `scopewatch collect` fills it)")
	var models, nominal listFlag
	fs.Var(&models, "model", "bundle folder the worker may retune from (its version must match a request's model_version); repeat for several")
	fs.Var(&nominal, "nominal", "labelled folder of the models' nominal domain, trained and tested on in every retune; repeat for several")
	share := fs.String("share", "", `shared subscription group for retune requests, e.g. tuners ("" for a plain subscription; see collect --help)`)
	studyPath := fs.String("study", retune.StudyNetwork, retuneStudyHelp)
	recipe := fs.String("recipe", "", recipeHelp)
	python := fs.String("python", defaultPython, pythonHelp)
	minSamples := fs.Int("min-samples", 200, "fewest labelled images a retune accepts")
	sims := fs.Int("baseline-sims", 0, "drift calibration streams for each new baseline (0: as the incumbent's)")
	root := fs.String("topic-root", mqttconn.Root, "topic root of the fleet (the devices' mqtt.topic_root)")
	ca := fs.String("ca", "", "PEM CA bundle for the broker certificate")
	cert := fs.String("cert", "", "client certificate (PEM)")
	clientKey := fs.String("client-key", "", "client key (PEM)")
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics on this address (e.g. 127.0.0.1:9467)")
	ortLib := fs.String("ort-lib", "", ortLibFlagHelp)
	check := addBundleCheckFlags(fs)
	verbose := fs.Bool("v", false, "debug logging")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 || *dbPath == "" || *out == "" || *keyPath == "" || *dataset == "" || len(models) == 0 {
		return fmt.Errorf("%w: want tune worker --broker URL --db FILE --out DIR --key FILE --dataset DIR/collect.db --model DIR [--model DIR ...]", errUsage)
	}
	key, err := inference.LoadPrivateKey(*keyPath)
	if err != nil {
		return err
	}
	study, recipeDir, err := retuneStudy(*studyPath, *recipe)
	if err != nil {
		return err
	}
	bopts, _, err := check.options()
	if err != nil {
		return err
	}
	// The worker trusts its own bundles, which become the next incumbents.
	bopts.TrustedKeys = append(bopts.TrustedKeys, key.Public().(ed25519.PublicKey))
	topics, err := mqttconn.NewTopics(*root)
	if err != nil {
		return fmt.Errorf("%w: --topic-root: %v", errUsage, err)
	}
	dir, err := datasetDir(*dataset)
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	reg := prometheus.NewRegistry()
	wm, err := retune.NewPromWorkerMetrics(reg)
	if err != nil {
		return err
	}
	cm, err := feedback.NewPromMetrics(reg)
	if err != nil {
		return err
	}
	coll, err := feedback.OpenCollector(ctx, feedback.CollectorConfig{Dir: dir, Topics: topics, Log: log.With("part", "collect"), Metrics: cm})
	if err != nil {
		return err
	}
	defer coll.Close()
	if err := os.MkdirAll(filepath.Dir(*dbPath), 0o755); err != nil {
		return fmt.Errorf("--db: %w", err)
	}
	db, err := store.Open(ctx, *dbPath, store.Options{}, retune.WorkerSchema)
	if err != nil {
		return err
	}
	defer db.Close()
	w, err := retune.NewWorker(ctx, retune.WorkerConfig{
		DB: db, Dir: *out, Dataset: coll, Topics: topics, Key: key, Models: models, Nominal: nominal, Study: study, Recipe: recipeDir, Python: *python,
		Snapshot: tuning.SnapshotOptions{MinSamples: *minSamples}, BaselineSims: *sims, Log: log.With("part", "retune"), Metrics: wm,
		OpenModel: func(dir string) (*inference.Bundle, *inference.Classifier, error) {
			b, err := inference.OpenBundle(dir, bopts)
			if err != nil {
				return nil, nil, err
			}
			clf, err := inference.NewClassifier(b, inference.ClassifierOptions{Engine: inference.EngineOptions{ORTLib: *ortLib, Sessions: throughputSessions(0)}})
			if err != nil {
				b.Close()
				return nil, nil, err
			}
			return b, clf, nil
		},
	})
	if err != nil {
		return err
	}
	stopMetrics, err := serveMetrics(*metricsAddr, reg, log)
	if err != nil {
		return err
	}
	defer stopMetrics()
	if *clientID == "" {
		h, _ := os.Hostname()
		*clientID = "tune-" + strings.ToLower(h)
	}
	base := mqttconn.Config{Broker: *broker, CAFile: *ca, CertFile: *cert, KeyFile: *clientKey}
	base.ApplyEnv(os.LookupEnv)
	rcfg, ccfg := base, base
	rcfg.ClientID, ccfg.ClientID = *clientID+"-retune", *clientID+"-collect"
	for _, c := range []mqttconn.Config{rcfg, ccfg} {
		if err := c.Validate(); err != nil {
			return fmt.Errorf("%w: %v", errUsage, err)
		}
	}
	log.Info("tune worker", "broker", *broker, "client_id", *clientID, "out", *out, "dataset", dir, "models", []string(models), "collect", *collect, "share", *share)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	if *collect {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[1] = coll.Run(ctx, ccfg, "")
		}()
	}
	// A study step is cancelled where it stands and resumes from the
	// journal; 20 s is ample for the trial in progress to notice.
	errs[0] = w.Run(ctx, rcfg, *share, 20*time.Second)
	wg.Wait()
	return errors.Join(errs...)
}
