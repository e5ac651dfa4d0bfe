// Sphinx's search fetches each result's page to show an excerpt, but a browser refuses fetch()
// on file:// pages, so opened from disk the results came without excerpts. There the page's
// text comes from search-pages.js (written by conf.py at build time) instead.
(() => {
  if (window.location.protocol !== "file:") return;
  const realFetch = window.fetch.bind(window);
  window.fetch = (resource, ...rest) => {
    const pages = window.LORA_NP_PAGES || {};
    const url = new URL(String(resource), window.location.href);
    const root = new URL(document.documentElement.dataset.content_root || "./", window.location.href);
    const name = decodeURIComponent(url.pathname.slice(root.pathname.length)).replace(/\.html$/, "");
    if (Object.prototype.hasOwnProperty.call(pages, name)) {
      return Promise.resolve(new Response(pages[name], {headers: {"Content-Type": "text/html"}}));
    }
    return realFetch(resource, ...rest);
  };
})();
