package testutil

import (
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

func connect(t *testing.T, url, id string) mqtt.Client {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker(url).SetClientID(id).SetAutoReconnect(false)
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", url, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

func retained(t *testing.T, b *Broker) string {
	t.Helper()
	c := connect(t, b.URL(), "reader")
	defer c.Disconnect(50)
	got := make(chan string, 1)
	c.Subscribe("t/retained", 1, func(_ mqtt.Client, m mqtt.Message) { got <- string(m.Payload()) })
	select {
	case s := <-got:
		return s
	case <-time.After(500 * time.Millisecond):
		return ""
	}
}

func TestBrokerRestartKeepsOrWipesPersistence(t *testing.T) {
	b := StartMosquitto(t)
	c := connect(t, b.URL(), "writer")
	if tok := c.Publish("t/retained", 1, true, "v1"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	c.Disconnect(50)
	if got := retained(t, b); got != "v1" {
		t.Fatalf("retained before restart = %q", got)
	}
	addr := b.Addr()
	b.Stop()
	if b.Running() {
		t.Fatal("running after Stop")
	}
	if _, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
		t.Fatal("port still accepting after Stop")
	}
	b.Start()
	if b.Addr() != addr {
		t.Fatalf("address changed: %s -> %s", addr, b.Addr())
	}
	if got := retained(t, b); got != "v1" {
		t.Fatalf("retained after graceful restart = %q, want v1\n%s", got, b.Log())
	}
	b.Stop()
	b.StartWiped()
	if got := retained(t, b); got != "" {
		t.Fatalf("retained after wiped restart = %q, want nothing", got)
	}
}

func TestProxyCutAndRestore(t *testing.T) {
	b := StartMosquitto(t)
	p := StartProxy(t, b.Addr())
	var lost atomic.Int32
	o := mqtt.NewClientOptions().AddBroker(p.URL()).SetClientID("via-proxy").SetAutoReconnect(false).
		SetConnectionLostHandler(func(mqtt.Client, error) { lost.Add(1) })
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect through proxy: %v", tok.Error())
	}
	defer c.Disconnect(50)
	p.Cut()
	Eventually(t, 5*time.Second, func() bool { return lost.Load() == 1 }, "client did not notice the cut")
	// While cut, new connections are refused at once.
	conn, err := net.Dial("tcp", p.Addr())
	if err == nil {
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := conn.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("read on cut proxy: %v, want EOF", err)
		}
		conn.Close()
	}
	p.Restore()
	connect(t, p.URL(), "again")

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Flap(ctx, 50*time.Millisecond, 50*time.Millisecond); close(done) }()
	Eventually(t, 5*time.Second, func() bool { return p.Cuts() >= 4 }, "flap did not cut")
	cancel()
	<-done
	connect(t, p.URL(), "after-flap")
}
