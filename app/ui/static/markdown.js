// A small Markdown renderer for model cards: headings, paragraphs, lists, tables, block quotes, fenced code,
// rules; inline code, bold, italics and links. It builds DOM nodes and sets text with textContent, never HTML,
// so nothing in a card can inject markup or script; links keep only http(s), relative and fragment targets.
"use strict";

const Markdown = (() => {
  const SAFE_HREF = /^(https?:\/\/|\/(?!\/)|#|\.\.?\/)/i;
  const INLINE = /(`+)([\s\S]*?[^`])\1(?!`)|\*\*([^*]+)\*\*|__([^_]+)__|\*([^*\s][^*]*)\*|\b_([^_\s][^_]*)_\b|\[([^\]]+)\]\(([^)\s]+)\)/;

  function inline(parent, text) {
    while (text) {
      const match = INLINE.exec(text);
      if (!match) {
        parent.append(text);
        return;
      }
      if (match.index) parent.append(text.slice(0, match.index));
      let node;
      if (match[2] !== undefined) {
        node = document.createElement("code");
        node.textContent = match[2];
      } else if (match[3] !== undefined || match[4] !== undefined) {
        node = document.createElement("strong");
        inline(node, match[3] ?? match[4]);
      } else if (match[5] !== undefined || match[6] !== undefined) {
        node = document.createElement("em");
        inline(node, match[5] ?? match[6]);
      } else if (SAFE_HREF.test(match[8])) {
        node = document.createElement("a");
        node.href = match[8];
        node.rel = "noopener noreferrer";
        node.target = "_blank";
        inline(node, match[7]);
      } else {
        node = document.createTextNode(match[7]);
      }
      parent.append(node);
      text = text.slice(match.index + match[0].length);
    }
  }

  function cells(line) {
    return line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
  }

  function table(lines) {
    const element = document.createElement("table");
    const head = element.createTHead().insertRow();
    for (const cell of cells(lines[0])) {
      const th = document.createElement("th");
      inline(th, cell);
      head.append(th);
    }
    const body = element.createTBody();
    for (const line of lines.slice(2)) {
      const row = body.insertRow();
      for (const cell of cells(line)) inline(row.insertCell(), cell);
    }
    return element;
  }

  function list(lines, ordered) {
    const element = document.createElement(ordered ? "ol" : "ul");
    let item = null;
    for (const line of lines) {
      const marker = /^\s*([-*+]|\d+[.)])\s+(.*)$/.exec(line);
      if (marker) {
        item = document.createElement("li");
        element.append(item);
        inline(item, marker[2]);
      } else if (item) {
        inline(item, " " + line.trim());
      }
    }
    return element;
  }

  // Blocks are recognised by their first line and end at a blank line or where another block begins.
  function render(source) {
    const out = document.createDocumentFragment();
    const lines = source.replace(/\r\n?/g, "\n").split("\n");
    const isListItem = (l) => /^\s*([-*+]|\d+[.)])\s+/.test(l);
    const startsBlock = (l) => /^(#{1,6}\s|```|>|\|)/.test(l) || isListItem(l) || /^(\*\s*){3,}$|^(-\s*){3,}$/.test(l.trim());
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      if (!line.trim()) { i += 1; continue; }
      const heading = /^(#{1,6})\s+(.*?)\s*#*$/.exec(line);
      if (heading) {
        const h = document.createElement(`h${Math.min(heading[1].length + 2, 6)}`);
        inline(h, heading[2]);
        out.append(h);
        i += 1;
      } else if (line.startsWith("```")) {
        const code = [];
        for (i += 1; i < lines.length && !lines[i].startsWith("```"); i += 1) code.push(lines[i]);
        i += 1;
        const pre = document.createElement("pre");
        pre.textContent = code.join("\n");
        out.append(pre);
      } else if (/^(\*\s*){3,}$|^(-\s*){3,}$/.test(line.trim())) {
        out.append(document.createElement("hr"));
        i += 1;
      } else if (line.startsWith("|") && i + 1 < lines.length && /^\|?\s*:?-+/.test(lines[i + 1])) {
        const rows = [];
        while (i < lines.length && lines[i].trim().startsWith("|")) rows.push(lines[i++]);
        out.append(table(rows));
      } else if (line.startsWith(">")) {
        const quoted = [];
        while (i < lines.length && lines[i].startsWith(">")) quoted.push(lines[i++].replace(/^>\s?/, ""));
        const quote = document.createElement("blockquote");
        quote.append(render(quoted.join("\n")));
        out.append(quote);
      } else if (isListItem(line)) {
        const items = [];
        while (i < lines.length && lines[i].trim() && (isListItem(lines[i]) || /^\s+/.test(lines[i]))) items.push(lines[i++]);
        out.append(list(items, /^\s*\d/.test(line)));
      } else {
        const text = [];
        while (i < lines.length && lines[i].trim() && !(text.length && startsBlock(lines[i]))) text.push(lines[i++].trim());
        const p = document.createElement("p");
        inline(p, text.join(" "));
        out.append(p);
      }
    }
    return out;
  }

  return { render };
})();
