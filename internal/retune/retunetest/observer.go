package retunetest

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/scopewatch/scopewatch/feedback/wire"
	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/internal/mqttconn"
)

// Observer is a fleet operator's client on one site: it sees the retained
// offer and chunks and the retune events.
type Observer struct {
	mu     sync.Mutex
	offers []wire.ModelOffer
	chunks map[string]wire.ModelChunk // topic -> chunk
	events []wire.RetuneEvent
}

// NewObserver subscribes to everything under scopewatch/v1/{site}/.
func NewObserver(t testing.TB, url, site string) *Observer {
	t.Helper()
	o := &Observer{chunks: map[string]wire.ModelChunk{}}
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("observer-%d", time.Now().UnixNano())).SetCleanSession(true))
	if err := mqttconn.Wait(c.Connect(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Disconnect(100) })
	tok := c.Subscribe("scopewatch/v1/"+site+"/#", 1, func(_ mqtt.Client, m mqtt.Message) {
		o.mu.Lock()
		defer o.mu.Unlock()
		switch {
		case strings.HasSuffix(m.Topic(), "/model/offer"):
			if off, err := wire.DecodeModelOffer(m.Payload()); err == nil {
				o.offers = append(o.offers, off)
			}
		case strings.Contains(m.Topic(), "/model/chunk/"):
			if len(m.Payload()) == 0 {
				delete(o.chunks, m.Topic())
			} else if c, err := wire.DecodeModelChunk(m.Payload()); err == nil {
				o.chunks[m.Topic()] = c
			}
		case strings.HasSuffix(m.Topic(), "/retune/event"):
			var e wire.RetuneEvent
			if err := json.Unmarshal(m.Payload(), &e); err == nil {
				o.events = append(o.events, e)
			}
		}
	})
	if err := mqttconn.Wait(tok, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return o
}

// Offers are the offers seen so far.
func (o *Observer) Offers() []wire.ModelOffer {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]wire.ModelOffer(nil), o.offers...)
}

// WaitEvent waits for the first event in state.
func (o *Observer) WaitEvent(t testing.TB, state string, timeout time.Duration) wire.RetuneEvent {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		o.mu.Lock()
		for _, e := range o.events {
			if e.State == state {
				o.mu.Unlock()
				return e
			}
		}
		o.mu.Unlock()
		time.Sleep(100 * time.Millisecond)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	t.Fatalf("no %s event within %v; events %+v", state, timeout, o.events)
	return wire.RetuneEvent{}
}

// Reassemble takes the latest offer and its chunks as a device would, and
// opens the bundle with the fleet key pub: hashes, signature and the
// offer's own claims must all hold.
func (o *Observer) Reassemble(t testing.TB, pub ed25519.PublicKey) (wire.ModelOffer, *inference.Bundle) {
	t.Helper()
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.offers) == 0 {
		t.Fatal("no offer")
	}
	off := o.offers[len(o.offers)-1]
	var chunks []wire.ModelChunk
	for _, c := range o.chunks {
		if c.Version == off.Version {
			chunks = append(chunks, c)
		}
	}
	archive, err := wire.AssembleModel(off, chunks)
	if err != nil {
		t.Fatalf("reassemble: %v", err)
	}
	path := filepath.Join(t.TempDir(), off.Version+".tar")
	if err := os.WriteFile(path, archive, 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := inference.OpenBundle(path, inference.BundleOptions{TrustedKeys: []ed25519.PublicKey{pub}})
	if err != nil {
		t.Fatalf("the offered bundle does not verify: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	if b.Manifest.Version != off.Version || b.ManifestSHA256 != off.ManifestSHA256 || b.Manifest.Signer != off.Signer {
		t.Fatalf("bundle %s (manifest %s) against offer %+v", b.Manifest.Version, b.ManifestSHA256, off)
	}
	return off, b
}

// PublishRequest publishes a retune request for site as a device would.
func PublishRequest(t testing.TB, url, site, id string) {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID("device-" + id))
	if err := mqttconn.Wait(c.Connect(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(100)
	p, err := json.Marshal(wire.RetuneRequest{Schema: wire.RetuneSchema, ID: id, Site: site, Device: "dev-1", ModelVersion: "2026.11.28-2",
		Reason: "drift alarm in 3 of 5 windows", Evidence: map[string]float64{"alarms": 3}, Time: time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	if err := mqttconn.Wait(c.Publish("scopewatch/v1/"+site+"/retune/request", 1, false, p), 10*time.Second); err != nil {
		t.Fatal(err)
	}
}
