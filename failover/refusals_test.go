package failover

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"
)

// planOrder is the servers a new plan for service tries in its first
// round.
func planOrder(t *testing.T, b *Backend, service string) []string {
	t.Helper()
	p := b.NewPlan(time.Now())
	p.ForService(service)
	defer p.Done()
	var out []string
	for {
		s, err := p.Next(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, s.Address)
		if len(p.queue) == 0 {
			return out
		}
	}
}

// A server that refused a service goes last for that service only, for
// open_for; a repeat after that doubles the time; serving it clears it.
func TestRefusedServiceGoesLastForThatService(t *testing.T) {
	b := primaryAndStandby(t, "")
	primary := b.Servers[0]
	if d := primary.RefusedService("sales", 12514); d != time.Hour {
		t.Fatalf("a new refusal is remembered for %v, want open_for (1h)", d)
	}
	if d := primary.RefusedService("sales", 12514); d != 0 {
		t.Errorf("a refusal while remembered is said new again (%v): it would be logged per session", d)
	}
	if got := planOrder(t, b, "sales"); !slices.Equal(got, []string{"s:1", "a:1"}) {
		t.Errorf("for sales: %v, want the standby first", got)
	}
	if got := planOrder(t, b, "orders"); !slices.Equal(got, []string{"a:1", "s:1"}) {
		t.Errorf("for another service: %v, want the priority order", got)
	}
	if got := planOrder(t, b, ""); !slices.Equal(got, []string{"a:1", "s:1"}) {
		t.Errorf("for no service read: %v, want the priority order", got)
	}
	primary.ServedService("sales")
	if got := planOrder(t, b, "sales"); !slices.Equal(got, []string{"a:1", "s:1"}) {
		t.Errorf("after the primary served sales: %v, want it first again", got)
	}
	if b.ServiceRefusalsLive(time.Now()) || b.ServiceRefusalsKept() {
		t.Errorf("no refusal left, yet sessions would wait for their service")
	}
}

func TestRefusedServiceDoublesAfterItsTime(t *testing.T) {
	r := &refusals{}
	now := time.Now()
	if d := r.remember("a:1", "sales", 12514, now, time.Second, 3*time.Second); d != time.Second {
		t.Fatalf("first: %v", d)
	}
	now = now.Add(1500 * time.Millisecond) // over: the next refusal doubles it
	r.remember("a:1", "sales", 12514, now, time.Second, 3*time.Second)
	if e := r.entries[refusalKey{"a:1", "sales"}]; e.lifetime != 2*time.Second || !e.until.Equal(now.Add(2*time.Second)) {
		t.Errorf("after a repeat: lifetime %v, until +%v; want 2s", e.lifetime, e.until.Sub(now))
	}
	now = now.Add(2500 * time.Millisecond)
	r.remember("a:1", "sales", 12514, now, time.Second, 3*time.Second)
	if e := r.entries[refusalKey{"a:1", "sales"}]; e.lifetime != 3*time.Second {
		t.Errorf("after a second repeat: lifetime %v, want max_open_for (3s)", e.lifetime)
	}
	if !r.live(now) || r.live(now.Add(3*time.Second)) {
		t.Errorf("live until the entry's end only")
	}
}

// Service names come from the network: a flood of made-up names keeps the
// memory at maxRefusals entries, and an entry that sessions consult (the
// switchover's) outlives the flood.
func TestRefusalMemoryIsBounded(t *testing.T) {
	b := primaryAndStandby(t, "")
	primary := b.Servers[0]
	primary.RefusedService("sales", 12514)
	for i := range 3 * maxRefusals {
		primary.RefusedService(fmt.Sprintf("junk%d", i), 12514)
		if i%16 == 0 {
			planOrder(t, b, "sales") // the real service's sessions go on
		}
	}
	if n := len(b.refusals.entries); n > maxRefusals || int(b.refusals.n.Load()) != n {
		t.Errorf("%d entries (count %d), want at most %d", n, b.refusals.n.Load(), maxRefusals)
	}
	if got := planOrder(t, b, "sales"); got[0] != "s:1" {
		t.Errorf("after the flood, sales: %v; its refusal was pushed out", got)
	}
}

// A reload shares the memory with the backend it replaces, without the
// servers it removed; a backend that no longer re-dials a REFUSE starts
// without it (its sessions would get the REFUSE of the server the memory
// sends them to first).
func TestInheritCarriesRefusalsByAddress(t *testing.T) {
	old := primaryAndStandby(t, "")
	old.Servers[0].RefusedService("sales", 12514)
	old.Servers[1].RefusedService("orders", 12514)
	without := testBackend(t, servers(`address = "a:1"`, `address = "c:1";priority = 1`))
	without.Inherit(old)
	if got := planOrder(t, without, "sales"); !slices.Equal(got, []string{"a:1", "c:1"}) || without.ServiceRefusalsLive(time.Now()) {
		t.Errorf("after a reload without \"refuse\" in retry_on, sales: %v; want the priority order, nothing remembered", got)
	}
	b := testBackend(t, "retry_on = [\"connect\", \"refuse\"]\n"+servers(`address = "a:1"`, `address = "c:1";priority = 1`))
	b.Inherit(old)
	if got := planOrder(t, b, "sales"); !slices.Equal(got, []string{"c:1", "a:1"}) {
		t.Errorf("after the reload, sales: %v; want a:1 last still", got)
	}
	if _, ok := b.refusals.entries[refusalKey{"s:1", "orders"}]; ok {
		t.Errorf("the refusal of a removed server is kept")
	}
}

// ServiceRefusals lists a server's live refusals, for the status page: by
// service, with their end, count and code; a service served again, and one
// past its time, is not listed.
func TestServiceRefusalsListsTheLiveOnes(t *testing.T) {
	b := primaryAndStandby(t, "")
	primary, standby := b.Servers[0], b.Servers[1]
	t0 := time.Now()
	primary.RefusedService("sales", 12514)
	primary.RefusedService("sales", 12514) // a session planned before the first refusal
	primary.RefusedService("orders", 12505)
	got := primary.ServiceRefusals(time.Now())
	if len(got) != 2 || got[0].Service != "orders" || got[1].Service != "sales" {
		t.Fatalf("the primary's refusals: %+v; want orders and sales", got)
	}
	if s := got[1]; s.Refusals != 2 || s.Code != 12514 || s.For != time.Hour || s.Until.Before(t0.Add(time.Hour)) || s.Until.After(time.Now().Add(time.Hour)) {
		t.Errorf("sales: %+v; want 2 refusals, ORA-12514, for 1h from the first", s)
	}
	if o := got[0]; o.Refusals != 1 || o.Code != 12505 {
		t.Errorf("orders: %+v; want 1 refusal, ORA-12505", o)
	}
	if got := standby.ServiceRefusals(time.Now()); len(got) != 0 {
		t.Errorf("the standby refused nothing, yet lists %+v", got)
	}
	primary.ServedService("sales")
	if got := primary.ServiceRefusals(time.Now()); len(got) != 1 || got[0].Service != "orders" {
		t.Errorf("after the primary served sales: %+v; want orders only", got)
	}
	if got := primary.ServiceRefusals(time.Now().Add(2 * time.Hour)); len(got) != 0 {
		t.Errorf("past open_for: %+v; want none (the server is dialed first again)", got)
	}
}
