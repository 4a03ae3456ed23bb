package feedback

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/scopewatch/scopewatch/internal/mqttconn"
	"github.com/scopewatch/scopewatch/internal/store"
	"github.com/scopewatch/scopewatch/internal/testutil"
)

// BenchmarkOutboxThroughput: small feedback samples (12x12 PNG crop, about
// 1.2 KB of JSON) enqueued one by one, each committed with
// synchronous=FULL, and delivered to a local mosquitto with PUBACK before
// deletion. The figure is end-to-end samples/s: enqueue + publish + delete.
//
//	go test -run '^$' -bench OutboxThroughput -benchtime 5000x ./feedback/
func BenchmarkOutboxThroughput(b *testing.B) {
	ctx := context.Background()
	broker := testutil.StartMosquitto(b)
	db, err := store.Open(ctx, filepath.Join(b.TempDir(), "bench.db"), store.Options{}, Schema())
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	ob, err := NewOutbox(ctx, db, OutboxConfig{})
	if err != nil {
		b.Fatal(err)
	}
	client, err := mqttconn.New(mqttconn.Config{Broker: broker.URL(), ClientID: "bench"}, nil, mqttconn.Hooks{})
	if err != nil {
		b.Fatal(err)
	}
	defer client.Disconnect(100)
	testutil.Eventually(b, 10*time.Second, client.IsConnectionOpen, "not connected")
	recs := make([][]Record, b.N)
	var bytes int
	for i := range recs {
		s, crop := faultSample(i, 0)
		recs[i], err = SampleRecords("scopewatch/v1/lab/dev-1/feedback", s, crop)
		if err != nil {
			b.Fatal(err)
		}
		bytes += len(recs[i][0].Payload)
	}
	if err := ob.Start(client); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	for i := range recs {
		if err := ob.EnqueueBatch(ctx, recs[i]...); err != nil {
			b.Fatal(err)
		}
	}
	enqueued := time.Since(start)
	for {
		if n, _ := ob.Depth(); n == 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	total := time.Since(start)
	b.StopTimer()
	ob.Close(ctx)
	b.ReportMetric(float64(b.N)/total.Seconds(), "samples/s")
	b.ReportMetric(float64(b.N)/enqueued.Seconds(), "enqueues/s")
	b.ReportMetric(float64(bytes)/float64(b.N), "B/sample")
}

// BenchmarkCollectorHandle: the receiving side storing small inline
// samples (image file write + fsync, SQLite commit with synchronous=FULL).
//
//	go test -run '^$' -bench CollectorHandle -benchtime 2000x ./feedback/
func BenchmarkCollectorHandle(b *testing.B) {
	ctx := context.Background()
	c, _ := openCollector(b)
	payloads := make([][]byte, b.N)
	for i := range payloads {
		s, crop := faultSample(i, 0)
		recs, err := SampleRecords("scopewatch/v1/lab/dev-1/feedback", s, crop)
		if err != nil {
			b.Fatal(err)
		}
		payloads[i] = recs[0].Payload
	}
	b.ResetTimer()
	for i := range payloads {
		if err := c.Handle(ctx, "scopewatch/v1/lab/dev-1/feedback", payloads[i]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "samples/s")
}
