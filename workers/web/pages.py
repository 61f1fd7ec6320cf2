"""The demo web tier's HTML: server-rendered, every value escaped, a little JS that polls JSON."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

from workers.web.guard import FIELD

STYLE = """
body{font:15px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#263238;color:#fff;padding:.6em 1.2em;display:flex;gap:1.4em;align-items:center}
header a{color:#cfd8dc;text-decoration:none}header b{font-size:1.15em}
main{padding:1em 1.2em;max-width:70em}section{background:#fff;border:1px solid #ddd;
border-radius:6px;padding:.8em 1em;margin:0 0 1em}h2{margin:.1em 0 .5em;font-size:1.1em}
label{margin-right:1em}input[type=number]{width:7em}.err{color:#b71c1c;font-weight:600}
.status{font-weight:600}.ready{color:#2e7d32}.failed{color:#b71c1c}.processing{color:#ef6c00}
.variants,.feed{display:flex;flex-wrap:wrap;gap:.8em;list-style:none;padding:0}
figure{margin:0;font-size:.85em;color:#555}img{display:block;background:#eee}
table{border-collapse:collapse}td,th{padding:.2em .8em .2em 0;text-align:left}
"""


def page(title: str, body: str, *, refresh: int | None = None) -> str:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8>{meta}"
            f"<title>{escape(title)} - Photofarm demo</title><style>{STYLE}</style></head>"
            "<body><header><b>Photofarm</b><a href=/>upload &amp; follow</a>"
            "<a href=/standins>pushes &amp; cross-posts</a></header>"
            f"<main>{body}</main></body></html>")


def csrf_field(token: str) -> str:
    return f'<input type=hidden name="{FIELD}" value="{escape(token)}">'


def home(token: str, uploads: Sequence[tuple[int, int]], error: str = "") -> str:
    err = f'<p class=err id=error>{escape(error)}</p>' if error else ""
    recent = "".join(f'<li><a href="/photos/{p}">photo {p}</a> by <a href="/users/{o}">user '
                     f"{o}</a></li>" for p, o in uploads) or "<li>none yet</li>"
    return page("Upload", f"""{err}
<section><h2>Upload a photo</h2>
<form method=post action=/upload enctype=multipart/form-data id=upload>{csrf_field(token)}
<label>as user <input type=number name=owner_id value=1 min=1 required></label>
<label>caption <input name=caption maxlength=2200></label>
<label><input type=checkbox name=share_to value=twitter> X</label>
<label><input type=checkbox name=share_to value=facebook> Facebook Page</label><br><br>
<input type=file name=photo accept="image/*" required> <button>Upload</button></form></section>
<section><h2>Follow or unfollow</h2>
<form method=post action=/follow id=follow>{csrf_field(token)}
<label>user <input type=number name=follower_id min=1 required></label>
<label>follows user <input type=number name=followee_id min=1 required></label>
<button name=action value=follow>Follow</button>
<button name=action value=unfollow>Unfollow</button></form></section>
<section><h2>Send a push</h2>
<form method=post action=/notify id=notify>{csrf_field(token)}
<label>to users <input name=user_ids value="1, 2, 3" required></label>
<label>alert <input name=alert maxlength=1000 value="Hello from the web tier" required></label>
<button>Notify</button></form>
<p>Under <code>farm demo --serve</code> users 1-3 have a device each: the push lands in the APNs
stand-in, on <a href=/standins>the stand-ins page</a>.</p></section>
<section><h2>Read a feed</h2><form method=get action=/feed id=feed>
<label>user <input type=number name=user_id min=1 required></label> <button>Open</button>
</form></section>
<section><h2>Uploaded here</h2><ul id=uploads>{recent}</ul></section>""")


def photo(photo_id: int) -> str:
    return page(f"Photo {photo_id}", f"""
<section><h2>Photo {photo_id}</h2><p>by <a id=owner></a>, status:
<span class=status id=status>...</span>
<span id=reason class=err></span></p><ul class=variants id=variants></ul></section>
<script>
const box = document.getElementById("variants");
async function poll() {{
  const r = await fetch("/api/photos/{photo_id}");
  const rec = r.ok ? await r.json() : {{status: "unknown"}};
  const st = document.getElementById("status");
  st.textContent = rec.status; st.className = "status " + rec.status;
  document.getElementById("reason").textContent = rec.reason || "";
  if (rec.owner_id) {{
    const o = document.getElementById("owner");
    o.textContent = "user " + rec.owner_id; o.href = "/users/" + rec.owner_id;
  }}
  if (rec.status === "ready") {{
    box.replaceChildren(...rec.variants.map(v => {{
      const f = document.createElement("figure"); f.dataset.variant = v.name;
      const img = document.createElement("img"); img.src = v.src; img.alt = v.name;
      img.width = Math.min(v.width, 306); img.height = Math.round(v.height * img.width / v.width);
      const c = document.createElement("figcaption");
      c.textContent = `${{v.name}} ${{v.width}}x${{v.height}}, ${{v.bytes}} bytes`;
      f.append(img, c); return f; }}));
  }}
  if (rec.status !== "ready" && rec.status !== "failed") setTimeout(poll, 400);
}}
poll();
</script>""")


def user(uid: int, token: str, following: Iterable[int]) -> str:
    follows = ", ".join(f'<a href="/users/{u}">{u}</a>' for u in following) or "nobody"
    return page(f"User {uid}", f"""
<section><h2>User {uid}'s feed</h2><p>follows: <span id=following>{follows}</span></p>
<form method=post action=/follow>{csrf_field(token)}<input type=hidden name=follower_id
value={uid}><label>user <input type=number name=followee_id min=1 required></label>
<button name=action value=follow>Follow</button>
<button name=action value=unfollow>Unfollow</button></form>
<ul class=feed id=feed></ul></section>
<script>
async function poll() {{
  const r = await fetch("/api/users/{uid}/feed");
  if (r.ok) {{
    const items = (await r.json()).feed;
    document.getElementById("feed").replaceChildren(...items.map(p => {{
      const li = document.createElement("li"); li.dataset.photo = p.photo_id;
      const a = document.createElement("a"); a.href = "/photos/" + p.photo_id;
      if (p.thumb) {{
        const img = document.createElement("img"); img.src = p.thumb; img.width = 150;
        img.height = 150; img.alt = "photo " + p.photo_id; a.append(img);
      }}
      const c = document.createElement("figcaption");
      c.textContent = `photo ${{p.photo_id}} by user ${{p.owner_id ?? "?"}}`;
      a.append(c); li.append(a); return li; }}));
    if (!items.length) document.getElementById("feed").textContent = "nothing yet";
  }}
  setTimeout(poll, 1000);
}}
poll();
</script>""")


def standins(tweets: list[tuple[str, str]], page_photos: list[tuple[str, str, int]],
             hooks: list[tuple[str, str, bool]], apns: list[tuple[str, str, str, str]],
             pushes: dict[str, int], attached: bool) -> str:
    if not attached:
        note = ("<p>No stand-ins attached: `farm demo --serve` runs this page beside local "
                "stand-ins of X, Facebook, APNs and a webhook subscriber.</p>")
    else:
        note = ""

    def rows(items: Iterable[Sequence[Any]]) -> str:
        out = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in item) + "</tr>"
                      for item in items)
        return out or "<tr><td>none yet</td></tr>"

    return page("Stand-ins", f"""{note}
<section><h2>X (stand-in): tweets</h2><table id=tweets>
<tr><th>user</th><th>text</th></tr>{rows(('@' + u, t) for u, t in tweets)}</table></section>
<section><h2>Facebook Pages (stand-in): photos</h2><table id=page-photos>
<tr><th>page</th><th>message</th><th>bytes</th></tr>{rows(page_photos)}</table></section>
<section><h2>Webhooks (local subscriber)</h2><table id=webhooks>
<tr><th>path</th><th>webhook-id</th><th>signature</th></tr>
{rows((p, i, 'verified' if ok else 'NOT verified') for p, i, ok in hooks)}</table></section>
<section><h2>Pushes (APNs stand-in), newest first</h2><table id=apns>
<tr><th>device</th><th>alert</th><th>at</th><th>answer</th></tr>{rows(apns)}</table></section>
<section><h2>Pushes (the farm's counters)</h2><table id=pushes>
{rows(sorted(pushes.items()))}</table></section>""", refresh=2)
