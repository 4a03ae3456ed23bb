package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/scopewatch/scopewatch/feedback"
	"github.com/scopewatch/scopewatch/internal/mqttconn"
)

func runCollect(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "export":
			return runCollectExport(ctx, args[1:], stdout, stderr)
		case "stats":
			return runCollectStats(ctx, args[1:], stdout, stderr)
		}
	}
	fs := newFlagSet("collect", stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, `usage: scopewatch collect --broker URL --db DATASET/collect.db [flags]
       scopewatch collect export --db DATASET/collect.db --out DIR
       scopewatch collect stats  --db DATASET/collect.db [--verify]

Subscribes to ROOT/+/+/feedback and .../label (ROOT: --topic-root), reassembles chunked crops, verifies every sha256 and stores samples and labels
idempotently by id; images are kept next to the database under images/,
named by their sha256. Malformed messages are logged, counted and dropped.

By default the subscription is plain, which loses nothing across broker
restarts. --share GROUP subscribes to feedback through $share/GROUP/... so
that several workers split the stream (labels still reach every worker: the
one holding the sample applies it, a label that arrives before its sample
waits for it, up to 30 days); use it only on a broker that keeps shared
subscriptions of persistent sessions across restarts (mosquitto 2.0.x does
not: what devices publish before the worker resubscribes is acknowledged to
them and then dropped).
Credentials: $SCOPEWATCH_MQTT_USERNAME / $SCOPEWATCH_MQTT_PASSWORD.

flags:`)
		fs.PrintDefaults()
	}
	broker := fs.String("broker", "tcp://127.0.0.1:1883", "MQTT broker URL (tcp://, ssl://, ws://, wss://)")
	clientID := fs.String("client-id", "", "MQTT client id; stable across restarts (default collect-HOSTNAME)")
	db := fs.String("db", "", "dataset database path (DIR/collect.db); images go to DIR/images")
	share := fs.String("share", "", `shared subscription group, e.g. tuners ("" for a plain subscription)`)
	root := fs.String("topic-root", mqttconn.Root, "topic root of the fleet (the devices' mqtt.topic_root)")
	ca := fs.String("ca", "", "PEM CA bundle for the broker certificate")
	cert := fs.String("cert", "", "client certificate (PEM)")
	key := fs.String("key", "", "client key (PEM)")
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics on this address (e.g. 127.0.0.1:9466)")
	verbose := fs.Bool("v", false, "debug logging")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	dir, err := datasetDir(*db)
	if err != nil {
		return err
	}
	if *clientID == "" {
		h, _ := os.Hostname()
		*clientID = "collect-" + strings.ToLower(h)
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	reg := prometheus.NewRegistry()
	metrics, err := feedback.NewPromMetrics(reg)
	if err != nil {
		return err
	}
	topics, err := mqttconn.NewTopics(*root)
	if err != nil {
		return fmt.Errorf("%w: --topic-root: %v", errUsage, err)
	}
	c, err := feedback.OpenCollector(ctx, feedback.CollectorConfig{Dir: dir, Topics: topics, Log: log, Metrics: metrics})
	if err != nil {
		return err
	}
	defer c.Close()
	stopMetrics, err := serveMetrics(*metricsAddr, reg, log)
	if err != nil {
		return err
	}
	defer stopMetrics()
	cfg := mqttconn.Config{Broker: *broker, ClientID: *clientID, CAFile: *ca, CertFile: *cert, KeyFile: *key}
	cfg.ApplyEnv(os.LookupEnv)
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	log.Info("collecting", "broker", *broker, "client_id", *clientID, "dataset", dir, "share", *share)
	err = c.Run(ctx, cfg, *share)
	st, serr := c.Stats(context.Background())
	if serr == nil {
		log.Info("collector stopped", "samples", st.Samples, "complete", st.Complete, "labelled", st.Labelled, "pending_chunks", st.PendingChunks, "pending_labels", st.PendingLabels)
	}
	return err
}

// serveMetrics serves reg's metrics on addr ("" serves nothing) for the
// fleet commands; the returned function stops it.
func serveMetrics(addr string, reg *prometheus.Registry, log *slog.Logger) (func(), error) {
	if addr == "" {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	log.Info("metrics", "addr", ln.Addr().String())
	return func() { srv.Close() }, nil
}

// datasetDir accepts DIR/collect.db (or DIR itself) and returns DIR.
func datasetDir(db string) (string, error) {
	if db == "" {
		return "", fmt.Errorf("%w: --db is required (the dataset database, DIR/collect.db)", errUsage)
	}
	if strings.HasSuffix(db, ".db") {
		if filepath.Base(db) != "collect.db" {
			return "", fmt.Errorf("%w: --db %s: the dataset database must be named collect.db (images live beside it)", errUsage, db)
		}
		return filepath.Dir(db), nil
	}
	return db, nil
}

func openExisting(ctx context.Context, db string) (*feedback.Collector, error) {
	dir, err := datasetDir(db)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, "collect.db")); err != nil {
		return nil, fmt.Errorf("open dataset: %w", err)
	}
	return feedback.OpenCollector(ctx, feedback.CollectorConfig{Dir: dir})
}

func runCollectExport(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("collect export", stderr)
	db := fs.String("db", "", "dataset database (DIR/collect.db)")
	out := fs.String("out", "", "output folder: images/ and labels.csv (path,label,slide)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" {
		return fmt.Errorf("%w: --out is required", errUsage)
	}
	c, err := openExisting(ctx, *db)
	if err != nil {
		return err
	}
	defer c.Close()
	n, err := c.Export(ctx, *out)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "exported %d labelled samples to %s\n", n, filepath.Join(*out, "labels.csv"))
	return nil
}

func runCollectStats(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("collect stats", stderr)
	db := fs.String("db", "", "dataset database (DIR/collect.db)")
	verify := fs.Bool("verify", false, "re-hash every stored image")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := openExisting(ctx, *db)
	if err != nil {
		return err
	}
	defer c.Close()
	st, err := c.Stats(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "samples %d, complete %d, labelled %d, pending chunks %d, pending labels %d\n", st.Samples, st.Complete, st.Labelled, st.PendingChunks, st.PendingLabels)
	if *verify {
		n, bad, err := c.Verify(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "verified %d images, %d bad\n", n, len(bad))
		for _, id := range bad {
			fmt.Fprintln(stdout, "bad:", id)
		}
		if len(bad) > 0 {
			return errSomeFailed
		}
	}
	return nil
}
