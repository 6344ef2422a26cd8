// The API page: nbo's document and the admin one, "Authorize" sends the key; no outside call
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    urls: [
      { url: "/docs.json", name: "nbo" },
      { url: "/admin/openapi.json", name: "nbo admin" },
    ],
    dom_id: "#swagger-ui",
    deepLinking: false,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout",
  });
});
